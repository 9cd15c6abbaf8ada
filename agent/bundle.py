"""The CA trust bundle in the agent's state dir (issue 19 §1): trust follows the latest verified bundle.

As in SPIRE, what an agent trusts is the CA set of the latest trust bundle it verified
(trust-bundle.pem), or the pinned CA (ca.crt, from enrollment) while none is stored. On a
'bundle' event, and as each watch stream starts, kms-agent watch and run fetch the server's
trust bundle (Enrollment/GetCABundle's trust_bundle_pem) and accept it when every CA in it
is one the agent trusts now or is vouched for by a cross-certificate from one
(kms/cabundle.py); it is then stored atomically (0644: certificates only, public) and
becomes the trust. A CA the new bundle leaves out (retired by the server, or a prepared
one cancelled) is no longer trusted, the pinned CA included, and is recorded as dropped
(dropped-cas.json): never trusted again. A cancelled CA's cross-certificate stays valid for
years, so an old bundle replayed through catch_up (an unverified connection) would verify
again: a bundle holding a dropped CA is refused. A bundle that does not verify changes nothing:
the agent keeps its trust and logs one line. Nor does an older one: the server versions its
bundle (GetCABundle's trust_bundle_version, the event-log seq of the newest 'bundle' event it
reflects), the agent stores the version with it (agent/bundlefile.py) and refuses a bundle whose
version is lower (one line): a replica that lags serves one, and taking it would drop a prepared
CA for good, or the CA of this agent's own certificate (SPIRE's bundle sequence numbers).
ca.crt itself is not touched: it records what enrollment pinned (and is no longer trusted once
dropped, even as the fallback).
An agent whose own certificate's CA is no longer trusted (retired, or dropped after its
certificate was revoked for cACompromise) cannot be served any more: retired_issuer names it.
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

__all__ = [
    "bundle_path",
    "catch_up",
    "drop_issuer",
    "news",
    "refresh_bundle",
    "retired_issuer",
    "trusted_now",
]

logger = logging.getLogger(__name__)


def bundle_path(state: StateDir) -> Path:
    return state.trust_bundle


def trusted_now(state: StateDir, now: datetime) -> list[x509.Certificate]:
    """The CAs this agent trusts now: the stored bundle's, else the pinned one; never a dropped one.

    Raises:
        OSError, ValueError: ca.crt is unreadable. FailedPrecondition: dropped-cas.json is.
    """
    return list(state.trust(now))


def _fingerprint(cert: x509.Certificate) -> str:
    return fingerprint(cert.public_bytes(Encoding.DER))


def _fingerprints(certs: list[x509.Certificate]) -> set[str]:
    return {_fingerprint(c) for c in certs}


def _issuer(cert: x509.Certificate, cas: list[x509.Certificate]) -> x509.Certificate | None:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:  # noqa: BLE001, S112 - InvalidSignature, ValueError, TypeError: another CA
            continue
        return ca
    return None


def _known(state: StateDir, now: datetime) -> list[x509.Certificate]:
    """Every CA this agent knows of: trusted, dropped, or pinned."""
    pinned = x509.load_pem_x509_certificates(state.ca.read_bytes())
    return [*trusted_now(state, now), *state.dropped().values(), *pinned]


def retired_issuer(state: StateDir, now: datetime) -> str | None:
    """The CA that issued this agent's certificate (its fingerprint, else its name) when this agent
    no longer trusts it: the server retired it (the agent took a bundle without it) or it was
    compromised. Such an agent cannot be served any more. None: its CA is trusted.

    Raises:
        KmsError, OSError, ValueError: the state is unreadable.
    """
    cert = state.load_certificate()
    if _issuer(cert, trusted_now(state, now)) is not None:
        return None
    ca = _issuer(cert, _known(state, now))
    return _fingerprint(ca) if ca is not None else cert.issuer.rfc4514_string()


def drop_issuer(state: StateDir, now: datetime) -> None:
    """This agent's certificate was revoked for cACompromise: the CA that issued it is dropped, never
    trusted again (signatures and peers it vouches for are refused, offline too). One line logged."""
    try:
        ca = _issuer(state.load_certificate(), _known(state, now))
        if ca is not None:
            state.save_dropped([ca])
    except (KmsError, OSError, ValueError) as exc:
        logger.warning("could not drop the compromised CA of this agent's certificate: %s", exc)
        return
    if ca is not None:
        logger.warning("no longer trusting CA %s: compromised (cACompromise)", _fingerprint(ca))


def _older(version: int, held: int) -> bool:
    """Whether the server's bundle (at version) is older than the stored one (at held): then one line."""
    if version < held:
        logger.warning(
            "the server's trust bundle (version %d) is older than the one this agent holds"
            " (version %d): kept the trust as it was; a replica that lags serves it",
            version,
            held,
        )
    return version < held


def refresh_bundle(state: StateDir, pem: str, now: datetime, version: int) -> list[TrustedCA] | None:
    """Verifies pem (the server's bundle, at version) from the CAs trusted now and stores it with its
    version: it is the trust from then on. None (and one line logged) when it is older than the
    stored one, does not verify, or cannot be stored: the trust stays as it was, nothing dropped."""
    try:
        if _older(version, state.stored_bundle()[1]):
            return None
        before = trusted_now(state, now)
        trusted = verify_bundle(parse_bundle(pem), before, now)
        back = sorted({t.fingerprint for t in trusted} & set(state.dropped()))
    except (BundleError, OSError, ValueError, KmsError) as exc:
        logger.warning("kept the CA trust as it was: the server's trust bundle does not verify (%s)", exc)
        return None
    if back:  # an old bundle replayed, say: a cancelled CA's cross-certificate is valid for years
        logger.warning(
            "kept the CA trust as it was: the server's trust bundle holds CA %s, which this agent"
            " dropped before (retired, cancelled or compromised) and never trusts again",
            ", ".join(back),
        )
        return None
    kept = {t.fingerprint for t in trusted}
    gone = [c for c in before if _fingerprint(c) not in kept]
    try:  # dropped first: a crash in between leaves the stored bundle, minus the dropped CAs
        if gone:
            state.save_dropped(gone)
        state.save_trust_bundle(pem.encode(), version)
    except OSError as exc:  # a full or read-only disk: the old trust stays, the agent goes on
        logger.warning("kept the CA trust as it was: cannot store %s (%s)", bundle_path(state), exc)
        return None
    dropped = _fingerprints(before) - kept
    logger.info(
        "stored the CA trust bundle in %s (version %d): trusting %s%s",
        bundle_path(state),
        version,
        ", ".join(t.fingerprint for t in trusted),
        f"; no longer {', '.join(sorted(dropped))}" if dropped else "",
    )
    return trusted


def news(state: StateDir, pem: str, version: int) -> bool:
    """Whether the server's bundle (at version) says more than this agent keeps: never an older one
    than the stored one (one line logged); a newer one; at the same version, a bundle other than the
    stored one, or (none stored) more than one certificate. An agent enrolled, upgraded or offline
    since the 'bundle' event never hears it: it checks at each stream's start instead."""
    try:
        stored, held = state.stored_bundle()
    except (OSError, ValueError):
        return True
    if version != held:
        return not _older(version, held)  # an older one logged
    return pem != stored and (bool(stored) or pem.count("BEGIN CERTIFICATE") > 1)


def catch_up(state: StateDir, enroll_servers: tuple[str, ...], now: datetime, timeout: float) -> bool:
    """After a `ca activate` this agent missed (offline through ca-propagation, or an activation
    --now), the server's certificate comes from a CA it has not heard of, and no connection it can
    verify reaches the bundle that vouches for it. The bundle is public and checked by its
    cross-certificates, so it is first read as enrollment reads it: over a connection to an
    enrollment address verified only under the CA that address presents. Nothing read there is
    stored: it only says which CAs the ones this agent trusts vouch for, and the presented CA must
    be one of them (else an impostor answered). The bundle that counts is then read again over a
    connection verified under those CAs, and taken as any bundle is (refresh_bundle: its version,
    dropped CAs). After an emergency rotation the server refuses this agent's certificate, whose
    CA it retired, and only the bundle tells the agent so (the watch then ends: retired_issuer).
    Returns whether the trust changed."""
    trusted = trusted_now(state, now)
    for address in enroll_servers:
        try:
            roots = _roots_at(address, trusted, state, now, timeout)
            if roots is None:
                continue
            with KmsClient(
                [address], b"".join(c.public_bytes(Encoding.PEM) for c in roots), timeout=timeout
            ) as client:
                pem, version = client.get_trust_bundle()
        except (KmsError, BundleError) as exc:  # Unreachable among them
            logger.warning("could not read the trust bundle at %s: %s", address, exc)
            continue
        if not news(state, pem, version):
            return False  # nothing new (or older): the failure is not about trust
        return refresh_bundle(state, pem, now, version) is not None
    return False


def _roots_at(
    address: str, trusted: list[x509.Certificate], state: StateDir, now: datetime, timeout: float
) -> list[x509.Certificate] | None:
    """The CAs to verify address under: those trusted, and (when it presents another) the ones its
    trust bundle vouches for from them, if the presented CA is among those. None: an address that
    presents a CA nothing trusted vouches for (one line logged). Raises KmsError, BundleError."""
    host, port = parse_hostport(address, what="enrollment address")
    presented = presented_ca(host, port, timeout)
    if presented in trusted:
        return trusted
    with KmsClient([address], presented.public_bytes(Encoding.PEM), timeout=timeout) as client:
        pem, _ = client.get_trust_bundle()  # unverified: only read, never stored
    vouched = [t.cert for t in verify_bundle(parse_bundle(pem), trusted, now)]
    if presented not in vouched or _fingerprint(presented) in state.dropped():
        logger.warning(
            "the server at %s presents CA %s, which nothing this agent trusts vouches for: kept the trust",
            address,
            _fingerprint(presented),
        )
        return None
    return [*trusted, *(c for c in vouched if c not in trusted)]
