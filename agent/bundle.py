"""The CA trust bundle in the agent's state dir (issue 19 §1): trust follows the latest verified bundle.

As in SPIRE, what an agent trusts is the CA set of the latest trust bundle it verified
(trust-bundle.pem), or the pinned CA (ca.crt, from enrollment) while none is stored. On a
'bundle' event, and as each watch stream starts, kms-agent watch and run fetch the server's
trust bundle (Enrollment/GetCABundle's trust_bundle_pem) and accept it when every CA in it
is one the agent trusts now or is vouched for by a cross-certificate from one
(kms/cabundle.py); it is then stored atomically (0644: certificates only, public) and
becomes the trust. A CA the new bundle leaves out (retired by the server, or a prepared
one cancelled) is no longer trusted, the pinned CA included. A bundle that does not verify
changes nothing: the agent keeps its trust and logs one line. ca.crt itself is not
touched: it records what enrollment pinned.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.bootstrap import presented_ca
from agent.client import KmsClient
from agent.state import StateDir
from kms.addresses import parse_hostport
from kms.cabundle import BundleError, TrustedCA, parse_bundle, verify_bundle
from kms.errors import KmsError
from kms.identity import fingerprint

__all__ = ["bundle_path", "catch_up", "news", "refresh_bundle", "trusted_now", "untrusted_server"]

logger = logging.getLogger(__name__)


def bundle_path(state: StateDir) -> Path:
    return state.trust_bundle


def trusted_now(state: StateDir, now: datetime) -> list[x509.Certificate]:
    """The CAs this agent trusts now: the stored bundle's, else the pinned one.

    Raises:
        OSError, ValueError: ca.crt is unreadable.
    """
    return list(state.anchors(now)) or x509.load_pem_x509_certificates(state.ca.read_bytes())


def _fingerprints(certs: list[x509.Certificate]) -> set[str]:
    return {fingerprint(c.public_bytes(Encoding.DER)) for c in certs}


def refresh_bundle(state: StateDir, pem: str, now: datetime) -> list[TrustedCA] | None:
    """Verifies pem from the CAs trusted now and stores it: it is the trust from then on. None (and
    one line logged) when it does not verify, or cannot be stored: the trust stays as it was."""
    try:
        before = trusted_now(state, now)
        trusted = verify_bundle(parse_bundle(pem), before, now)
    except (BundleError, OSError, ValueError) as exc:
        logger.warning("kept the CA trust as it was: the server's trust bundle does not verify (%s)", exc)
        return None
    try:
        state.save_trust_bundle(pem.encode())
    except OSError as exc:  # a full or read-only disk: the old trust stays, the agent goes on
        logger.warning("kept the CA trust as it was: cannot store %s (%s)", bundle_path(state), exc)
        return None
    dropped = _fingerprints(before) - {t.fingerprint for t in trusted}
    logger.info(
        "stored the CA trust bundle in %s: trusting %s%s",
        bundle_path(state),
        ", ".join(t.fingerprint for t in trusted),
        f"; no longer {', '.join(sorted(dropped))}" if dropped else "",
    )
    return trusted


def news(state: StateDir, pem: str) -> bool:
    """Whether the server's bundle says more than this agent keeps: a bundle other than the stored
    one, or (none stored) more than one certificate. An agent enrolled, upgraded or offline since
    the 'bundle' event never hears it: it checks at each stream's start instead."""
    try:
        stored = bundle_path(state).read_text()
    except FileNotFoundError:
        stored = ""
    except (OSError, ValueError):
        return True
    return pem != stored and (bool(stored) or pem.count("BEGIN CERTIFICATE") > 1)


def untrusted_server(message: str) -> bool:
    """Whether a failed connection failed because this agent could not verify the server's
    certificate (gRPC says so only in the message)."""
    return "CERTIFICATE_VERIFY_FAILED" in message


def catch_up(state: StateDir, enroll_servers: tuple[str, ...], now: datetime, timeout: float) -> bool:
    """After a `ca activate` this agent missed (offline through ca-propagation, or an activation
    --now), the server's certificate comes from a CA it has not heard of, and no verified
    connection can fetch the bundle that vouches for it. The bundle is public and checked by its
    cross-certificates, so it is read as enrollment reads it: over a connection to an enrollment
    address verified only under the CA that address presents (nothing is sent over it but the
    request), then accepted only if it verifies from what this agent trusts now (refresh_bundle).
    Returns whether the trust changed."""
    trusted = trusted_now(state, now)
    for address in enroll_servers:
        try:
            host, port = parse_hostport(address, what="enrollment address")
            presented = presented_ca(host, port, timeout)
            if presented in trusted:
                return False  # the server's CA is trusted: the failure is not about trust
            with KmsClient([address], presented.public_bytes(Encoding.PEM), timeout=timeout) as client:
                pem = client.get_trust_bundle()
        except KmsError as exc:  # Unreachable among them
            logger.warning("could not read the trust bundle at %s: %s", address, exc)
            continue
        return refresh_bundle(state, pem, now) is not None
    return False
