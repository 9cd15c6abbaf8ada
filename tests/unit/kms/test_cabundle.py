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


def _ca(trust_domain: str = "t", days: int = 30) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = profile.ca_builder(
        key.public_key(), trust_domain, x509.random_serial_number(), NOW, timedelta(days=days)
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
    new, _ = _ca(days=90)  # valid after the cross-certificate (and old) expired
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


def test_verified_from_any_of_several_trusted_cas_and_only_the_bundle_s_cas_come_back() -> None:
    old, old_key = _ca()
    new, new_key = _ca()
    newer, _ = _ca()
    other, _ = _ca()
    # Trusting other and new: newer is vouched for by new; old (trusted before, absent) is not returned.
    bundle = cabundle.parse_bundle(_pem(new, _cross(new, old, old_key), newer, _cross(newer, new, new_key)))
    trusted = cabundle.verify_bundle(bundle, [other, new], NOW)
    assert [(t.cert, t.vouched_by) for t in trusted] == [(new, None), (newer, trusted[0].fingerprint)]
    with pytest.raises(cabundle.BundleError, match="has no valid cross-certificate"):
        cabundle.verify_bundle(bundle, [other], NOW)


def test_an_expired_ca_is_left_out_and_a_bundle_of_expired_cas_fails() -> None:
    old, old_key = _ca()
    new, _ = _ca()
    later = NOW + timedelta(days=40)
    young = profile.ca_builder(
        (young_key := ec.generate_private_key(ec.SECP256R1())).public_key(), "t", 5, later, timedelta(days=30)
    ).sign(young_key, hashes.SHA256())
    assert cabundle.verify_bundle(cabundle.parse_bundle(_pem(young, old)), young, later)[0].cert == young
    with pytest.raises(cabundle.BundleError, match="no CA of the bundle is valid now"):
        cabundle.verify_bundle(cabundle.parse_bundle(_pem(old, new, _cross(new, old, old_key))), old, later)


def test_a_stored_bundle_is_one_family_from_any_of_its_cas() -> None:
    old, old_key = _ca()
    new, new_key = _ca()
    stranger, _ = _ca()
    # After an activation: the active CA first, the retiring one vouched for by it (oldWithNew).
    family = _pem(new, _cross(new, old, old_key), old, _cross(old, new, new_key))
    assert [t.cert for t in cabundle.verify_stored(cabundle.parse_bundle(family), NOW)] == [new, old]
    with pytest.raises(cabundle.BundleError, match="has no valid cross-certificate"):
        cabundle.verify_stored(cabundle.parse_bundle(family + _pem(stranger)), NOW)
