"""Test PKI made at test time (never committed) and field-by-field certificate checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_der(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    builder: x509.CertificateSigningRequestBuilder | None = None,
) -> bytes:
    builder = builder or x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def foreign_ca_and_client(
    agent_key: rsa.RSAPrivateKey, trust_domain: str, name: str
) -> tuple[x509.Certificate, x509.Certificate]:
    """Another CA, and a client certificate from it that looks exactly like one of ours."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Seed KMS CA {trust_domain}")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(agent_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/agent/{name}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(agent_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, leaf


def _ku(cert: x509.Certificate) -> x509.Extension[x509.KeyUsage]:
    return cert.extensions.get_extension_for_class(x509.KeyUsage)


def assert_is_ca(cert: x509.Certificate, trust_domain: str) -> None:
    """The root profile, extension by extension, with criticality."""
    assert cert.version is x509.Version.v3
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"Seed KMS CA {trust_domain}"
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True and bc.value.path_length == 0
    ku = _ku(cert)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert not (ku.value.key_encipherment or ku.value.content_commitment or ku.value.key_agreement)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical and ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not aki.critical and aki.value.key_identifier == ski.value.digest
    assert 64 <= cert.serial_number.bit_length() <= 159


def assert_is_agent_cert(
    cert: x509.Certificate,
    ca: x509.Certificate,
    *,
    name: str,
    trust_domain: str,
    public_key: rsa.RSAPublicKey,
    lifetime: timedelta = timedelta(hours=24),
) -> None:
    """The agent profile, extension by extension, with criticality."""
    assert cert.version is x509.Version.v3
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    assert cert.public_key() == public_key
    assert cert.serial_number > 0 and 64 <= cert.serial_number.bit_length() <= 159
    oids = {e.oid.dotted_string for e in cert.extensions}
    assert oids == {"2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.17", "2.5.29.14", "2.5.29.35"}, oids
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = _ku(cert)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.content_commitment)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/agent/{name}")]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical and ski.value == x509.SubjectKeyIdentifier.from_public_key(public_key)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert not aki.critical and aki.value.key_identifier == ca_ski.digest
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == lifetime + timedelta(seconds=60)
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
