"""kms/policy.py: each check raises on its defect; AllOf composes and refuses to be empty."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kms import profile
from kms.errors import Unauthenticated
from kms.policy import AgentIdentity, AllOf, CertificateRejected, ChainsTo, ClientAuth
from tests.pki import foreign_ca_and_client

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pki(rsa_key: rsa.RSAPrivateKey) -> tuple[x509.Certificate, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.ca_builder(key.public_key(), "example.org", 1 << 70, NOW, timedelta(days=10)).sign(
        key, hashes.SHA256()
    )
    leaf = profile.agent_builder(
        rsa_key.public_key(), ca, "example.org", "web-1", 1 << 71, NOW, timedelta(hours=1)
    ).sign(key, hashes.SHA256())
    return ca, leaf


def test_valid_agent_passes(pki: tuple[x509.Certificate, x509.Certificate]) -> None:
    ca, leaf = pki
    AllOf(ChainsTo([ca]), ClientAuth(), AgentIdentity("example.org", "web-1")).verify(leaf, NOW)


def test_expired_and_not_yet_valid(pki: tuple[x509.Certificate, x509.Certificate]) -> None:
    ca, leaf = pki
    for when in (NOW + timedelta(hours=2), NOW - timedelta(hours=1)):
        with pytest.raises(CertificateRejected, match="certificate is not valid at .* \\(valid from .* to "):
            ChainsTo([ca]).verify(leaf, when)


def test_other_ca(pki: tuple[x509.Certificate, x509.Certificate], rsa_key: rsa.RSAPrivateKey) -> None:
    ca, _ = pki
    _, forged = foreign_ca_and_client(rsa_key, "example.org", "web-1")
    with pytest.raises(CertificateRejected) as info:
        ChainsTo([ca]).verify(forged, NOW)
    assert "not issued by this CA" in info.value.message
    assert "enroll again" not in info.value.message  # advice only where it fits: the caller's own certificate
    with pytest.raises(CertificateRejected, match="not issued by this CA.*; enroll again$"):
        ChainsTo([ca], advice="enroll again").verify(forged, NOW)


def test_wrong_identity(pki: tuple[x509.Certificate, x509.Certificate]) -> None:
    _, leaf = pki
    with pytest.raises(CertificateRejected):
        AgentIdentity("example.org", "web-2").verify(leaf, NOW)
    with pytest.raises(CertificateRejected):
        AgentIdentity("other.org").verify(leaf, NOW)


def test_ca_is_not_a_client(pki: tuple[x509.Certificate, x509.Certificate]) -> None:
    ca, _ = pki
    with pytest.raises(CertificateRejected):
        ClientAuth().verify(ca, NOW)
    with pytest.raises(CertificateRejected):
        AgentIdentity("example.org").verify(ca, NOW)


def test_rejection_is_unauthenticated() -> None:
    assert issubclass(CertificateRejected, Unauthenticated)


def test_empty_allof_is_an_error() -> None:
    with pytest.raises(ValueError):
        AllOf()
