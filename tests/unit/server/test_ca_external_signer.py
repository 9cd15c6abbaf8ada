"""server/ca/external.py: certificates, CRLs and OCSP responses signed by a key cryptography does not hold.

The "external" key here is an in-memory key behind a sign(data) callable, as a
PKCS#11 token is; the SoftHSM2 tests (tests/e2e/test_hsm_story.py) sign in a real token.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from kms import profile
from server.ca.authority import CertificateAuthority, create_external_root, generate_key
from server.ca.external import ExternalSigner, SignerError
from server.ca.keytype import CAKeyType
from server.ca.signer import SoftwareSigner

TD = "example.org"


def _external(key: profile.IssuerKey, key_type: CAKeyType) -> ExternalSigner:
    digest = hashes.SHA384() if key_type is CAKeyType.EC_P384 else hashes.SHA256()

    def sign(data: bytes) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), digest)
        return key.sign(data, ec.ECDSA(digest))

    return ExternalSigner(key.public_key(), sign)


@pytest.mark.parametrize("key_type", [CAKeyType.EC_P384, CAKeyType.RSA_3072])
def test_signs_certificates_crls_and_ocsp_that_verify(
    rsa_key: rsa.RSAPrivateKey, key_type: CAKeyType
) -> None:
    now = datetime.now(UTC)
    signer = _external(generate_key(key_type), key_type)
    root = create_external_root(signer, TD, timedelta(days=30), now)
    root.cert.verify_directly_issued_by(root.cert)
    assert root.cert.signature_hash_algorithm is not None
    assert root.cert.signature_hash_algorithm.name == (
        "sha384" if key_type is CAKeyType.EC_P384 else "sha256"
    )
    ca = CertificateAuthority(root, TD, timedelta(hours=1), lambda: now)
    assert ca.slow_signing  # a token is never asked on the event loop
    agent = asyncio.run(ca.issue_agent(rsa_key.public_key(), "web-1"))
    agent.verify_directly_issued_by(root.cert)
    crl = ca.sign_crl(
        [(agent.serial_number, now, x509.ReasonFlags.key_compromise)], 7, now, now + timedelta(hours=1)
    )
    assert crl.is_signature_valid(root.cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(agent.serial_number) is not None
    builder = ocsp.OCSPResponseBuilder().add_response(
        agent, root.cert, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, now, now + timedelta(hours=1), None, None
    )
    response = ca.sign_ocsp(builder)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == agent.serial_number
    assert (
        response.responder_key_hash
        == x509.SubjectKeyIdentifier.from_public_key(root.cert.public_key()).digest
    )


def test_a_signature_that_does_not_verify_is_never_used() -> None:
    key = generate_key(CAKeyType.EC_P256)
    other = generate_key(CAKeyType.EC_P256)
    signer = ExternalSigner(key.public_key(), _external(other, CAKeyType.EC_P256)._sign)
    with pytest.raises(SignerError, match="does not verify"):
        create_external_root(signer, TD, timedelta(days=30), datetime.now(UTC))


def test_refuses_a_key_the_ca_cannot_use() -> None:
    with pytest.raises(ValueError, match="unsupported CA key"):
        ExternalSigner(ec.generate_private_key(ec.SECP521R1()).public_key(), lambda data: b"")


def test_the_software_signer_signs_as_the_builders_always_did() -> None:
    """RSA PKCS#1 v1.5 signatures are deterministic: the same bytes prove the same path."""
    key = generate_key(CAKeyType.RSA_3072)
    now = datetime(2026, 12, 7, tzinfo=UTC)
    builder = profile.ca_builder(key.public_key(), TD, 42, now, timedelta(days=30))
    direct = builder.sign(key, hashes.SHA256())
    assert SoftwareSigner(key).sign_certificate(builder) == direct
    assert SoftwareSigner(key).sign_certificate(builder).signature == direct.signature


def _crl_builder(issuer: x509.Certificate, now: datetime) -> x509.CertificateRevocationListBuilder:
    entry = x509.RevokedCertificateBuilder().serial_number(9).revocation_date(now)
    entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + timedelta(hours=1))
        .add_extension(x509.CRLNumber(3), critical=False)
        .add_revoked_certificate(entry.build())
    )


@pytest.mark.parametrize("key_type", [CAKeyType.RSA_3072, CAKeyType.EC_P384])
def test_the_external_signer_signs_what_the_builders_sign(key_type: CAKeyType) -> None:
    """RSA: the very bytes cryptography's builders make with the key in memory. ECDSA signatures are
    randomised: the same TBS and signature algorithm, and a signature that verifies."""
    key = generate_key(key_type)
    digest = hashes.SHA384() if key_type is CAKeyType.EC_P384 else hashes.SHA256()
    now = datetime(2026, 12, 7, tzinfo=UTC)
    cert_builder = profile.ca_builder(key.public_key(), TD, 42, now, timedelta(days=30))
    direct = cert_builder.sign(key, digest)
    external = _external(key, key_type)
    cert = external.sign_certificate(cert_builder)
    crl_builder = _crl_builder(direct, now)
    direct_crl, crl = crl_builder.sign(key, digest), external.sign_crl(crl_builder)
    if key_type is CAKeyType.RSA_3072:
        assert cert.public_bytes(Encoding.DER) == direct.public_bytes(Encoding.DER)
        assert crl.public_bytes(Encoding.DER) == direct_crl.public_bytes(Encoding.DER)
    assert cert.tbs_certificate_bytes == direct.tbs_certificate_bytes
    assert cert.signature_algorithm_oid == direct.signature_algorithm_oid
    assert _algorithm(cert) == _algorithm(direct)  # the outer AlgorithmIdentifier, DER
    assert crl.tbs_certlist_bytes == direct_crl.tbs_certlist_bytes
    assert _algorithm(crl) == _algorithm(direct_crl)
    cert.verify_directly_issued_by(direct)
    assert crl.is_signature_valid(key.public_key())


def _algorithm(signed: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    if isinstance(signed, x509.Certificate):
        return bytes(
            asn1_x509.Certificate.load(signed.public_bytes(Encoding.DER))["signature_algorithm"].dump()
        )
    return bytes(
        asn1_crl.CertificateList.load(signed.public_bytes(Encoding.DER))["signature_algorithm"].dump()
    )
