"""The CA trust bundle in the agent's state dir (issue 19 §1).

On a 'bundle' event, kms-agent watch and run fetch the server's trust bundle
(Enrollment/GetCABundle's trust_bundle_pem) and keep it only if every CA in it is
the pinned one (ca.crt, from enrollment) or is vouched for by a cross-certificate
from a CA already trusted (kms/cabundle.py). It is then stored atomically as
trust-bundle.pem (0644: certificates only, public). A bundle that does not verify
changes nothing: the agent keeps its old trust and logs one line. ca.crt itself is
not touched: StateDir.load verifies the stored bundle from it again, and every CA of
it is then a trust anchor beside the pinned one (the server's certificate, peers',
this agent's renewed certificate), so a CA activated later is already trusted.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from cryptography import x509

from agent.state import StateDir
from kms.cabundle import BundleError, TrustedCA, parse_bundle, verify_bundle
from kms.securefile import write_atomic

__all__ = ["bundle_path", "news", "refresh_bundle", "stored_bundle"]

logger = logging.getLogger(__name__)


def bundle_path(state: StateDir) -> Path:
    return state.trust_bundle


def _pinned(state: StateDir) -> x509.Certificate:
    """The CA pinned at enrollment (ca.crt; the active CA first)."""
    return x509.load_pem_x509_certificates(state.ca.read_bytes())[0]


def refresh_bundle(state: StateDir, pem: str, now: datetime) -> list[TrustedCA] | None:
    """Verifies pem from the pinned CA and stores it; None (and one line logged) when it does not verify."""
    try:
        trusted = verify_bundle(parse_bundle(pem), _pinned(state), now)
    except (BundleError, OSError, ValueError) as exc:
        logger.warning("kept the CA trust as it was: the server's trust bundle does not verify (%s)", exc)
        return None
    try:
        write_atomic(bundle_path(state), pem.encode(), mode=0o644)
    except OSError as exc:  # a full or read-only disk: the old trust stays, the agent goes on
        logger.warning("kept the CA trust as it was: cannot store %s (%s)", bundle_path(state), exc)
        return None
    logger.info(
        "stored the CA trust bundle in %s: %s",
        bundle_path(state),
        ", ".join(t.fingerprint for t in trusted),
    )
    return trusted


def stored_bundle(state: StateDir, now: datetime) -> list[TrustedCA] | None:
    """The stored bundle's CAs, checked again from the pinned CA; None when none is stored, or it
    no longer verifies (a bundle left from an earlier enrollment)."""
    path = bundle_path(state)
    try:
        return verify_bundle(parse_bundle(path.read_bytes()), _pinned(state), now)
    except FileNotFoundError:
        return None
    except (BundleError, OSError, ValueError) as exc:
        logger.warning("%s does not verify from the pinned CA: %s", path, exc)
        return None


def news(state: StateDir, pem: str) -> bool:
    """Whether the server's bundle says more than this agent keeps: a prepared CA (more than one
    certificate) it has not stored yet. An agent enrolled, upgraded or offline since the 'bundle'
    event never hears it: it checks at each stream's start instead."""
    try:
        stored = bundle_path(state).read_text()
    except FileNotFoundError:
        stored = ""
    except (OSError, ValueError):
        return True
    return pem != stored and (bool(stored) or pem.count("BEGIN CERTIFICATE") > 1)
