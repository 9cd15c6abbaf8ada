"""The trust bundle (kms/cabundle.py): a new CA is trusted only through a cross-certificate from a CA
already trusted (RFC 4210 newWithOld), checked for key, subject, signer and validity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms import cabundle, profile

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _ca(trust_domain: str = "t") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = profile.ca_builder(
        key.public_key(), trust_domain, x509.random_serial_number(), NOW, timedelta(days=30)
    )
    return cert.sign(key, hashes.SHA256()), key


def _cross(new: x509.Certificate, old: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return cabundle.cross_builder(new, old, x509.random_serial_number(), NOW).sign(key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def test_a_cross_certified_ca_is_trusted_from_the_pinned_one() -> None:
    old, old_key = _ca()
    new, new_key = _ca()
    newer, _ = _ca()
    cross = _cross(new, old, old_key)
    assert (
        cross.subject == new.subject
        and cross.issuer == old.subject
        and cross.public_key() == new.public_key()
    )
    bundle = cabundle.parse_bundle(_pem(old, new, cross, newer, _cross(newer, new, new_key)))
    assert bundle.cas == (old, new, newer) and len(bundle.crosses) == 2
    trusted = cabundle.verify_bundle(bundle, old, NOW)
    assert [t.cert for t in trusted] == [old, new, newer]
    assert [t.vouched_by for t in trusted] == [None, trusted[0].fingerprint, trusted[1].fingerprint]


@pytest.mark.parametrize("case", ["no cross", "signed by a stranger", "expired", "another key"])
def test_a_ca_without_a_valid_cross_certificate_is_not_trusted(case: str) -> None:
    old, old_key = _ca()
    new, _ = _ca()
    stranger, stranger_key = _ca()
    crosses = {
        "no cross": [],
        "signed by a stranger": [_cross(new, stranger, stranger_key)],
        "expired": [_cross(new, old, old_key)],  # checked after it ends, below
        "another key": [_cross(stranger, old, old_key)],
    }[case]
    bundle = cabundle.parse_bundle(_pem(new, *crosses))
    with pytest.raises(cabundle.BundleError, match="has no valid cross-certificate from a trusted CA"):
        cabundle.verify_bundle(bundle, old, NOW + timedelta(days=31) if case == "expired" else NOW)


def test_garbage_is_refused() -> None:
    with pytest.raises(cabundle.BundleError, match="not a PEM certificate bundle"):
        cabundle.parse_bundle("not pem")
    old, old_key = _ca()
    new, _ = _ca()
    with pytest.raises(cabundle.BundleError, match="holds no CA certificate"):
        cabundle.parse_bundle(_pem(_cross(new, old, old_key)))
