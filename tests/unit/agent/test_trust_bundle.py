"""The agent's trust bundle (agent/bundle.py): stored (0644, atomically) only when every CA in it
verifies from the pinned CA; otherwise the old trust stays, with one line logged."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.bundle import bundle_path, refresh_bundle, stored_bundle
from agent.state import StateDir
from kms import cabundle, profile
from kms.identity import fingerprint

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = profile.ca_builder(key.public_key(), "t", x509.random_serial_number(), NOW, timedelta(days=30))
    return builder.sign(key, hashes.SHA256()), key


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def test_stored_only_when_it_verifies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old, old_key = _ca()
    new, _ = _ca()
    state = StateDir(tmp_path)
    state.ca.write_text(_pem(old))
    cross = cabundle.cross_builder(new, old, x509.random_serial_number(), NOW).sign(old_key, hashes.SHA256())
    # Without the cross-certificate: nothing stored, one line.
    with caplog.at_level(logging.WARNING, logger="agent.bundle"):
        assert refresh_bundle(state, _pem(old, new), NOW) is None
    assert [r.getMessage() for r in caplog.records] == [
        "kept the CA trust as it was: the server's trust bundle does not verify (CA "
        + fingerprint(new.public_bytes(serialization.Encoding.DER))
        + " has no valid cross-certificate from a trusted CA)"
    ]
    assert not bundle_path(state).exists() and stored_bundle(state, NOW) is None
    # With it: stored, public, and read back verified.
    trusted = refresh_bundle(state, _pem(old, new, cross), NOW)
    assert trusted is not None and [t.cert for t in trusted] == [old, new]
    assert bundle_path(state).stat().st_mode & 0o777 == 0o644
    assert [t.fingerprint for t in stored_bundle(state, NOW) or []] == [t.fingerprint for t in trusted]
