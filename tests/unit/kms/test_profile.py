"""kms/profile.py: templates from our data only, and re-checks that catch every defect."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms import profile
from tests.pki import assert_is_agent_cert, assert_is_ca

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SERIAL = 0x5EED_0000_0000_0000_0001
TTL = timedelta(hours=24)


@pytest.fixture(scope="module")
def ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca(ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return profile.ca_builder(ca_key.public_key(), "example.org", SERIAL, NOW, timedelta(days=3650)).sign(
        ca_key, hashes.SHA256()
    )


def _agent(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, key: rsa.RSAPrivateKey
) -> x509.Certificate:
    return profile.agent_builder(key.public_key(), ca, "example.org", "web-1", SERIAL + 1, NOW, TTL).sign(
        ca_key, hashes.SHA256()
    )


def test_ca_template(ca: x509.Certificate) -> None:
    assert_is_ca(ca, "example.org")
    assert ca.serial_number == SERIAL
    assert ca.not_valid_before_utc == NOW - profile.BACKDATE
    profile.check_ca_certificate(ca, timedelta(days=3650))


def test_agent_template(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    cert = _agent(ca, ca_key, rsa_key)
    assert cert.not_valid_before_utc == NOW - profile.BACKDATE
    assert cert.not_valid_after_utc == NOW + TTL
    profile.check_agent_certificate(
        cert, ca, trust_domain="example.org", name="web-1", public_key=rsa_key.public_key(), max_ttl=TTL
    )
    # assert_is_agent_cert checks validity against the wall clock; shift the template to now.
    now = datetime.now(UTC)
    live = profile.agent_builder(rsa_key.public_key(), ca, "example.org", "web-1", SERIAL, now, TTL).sign(
        ca_key, hashes.SHA256()
    )
    assert_is_agent_cert(live, ca, name="web-1", trust_domain="example.org", public_key=rsa_key.public_key())


def test_lifetime_is_capped_by_the_ca(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    late = ca.not_valid_after_utc - timedelta(hours=1)
    cert = profile.agent_builder(rsa_key.public_key(), ca, "example.org", "web-1", SERIAL, late, TTL).sign(
        ca_key, hashes.SHA256()
    )
    assert cert.not_valid_after_utc == ca.not_valid_after_utc


@pytest.mark.parametrize("serial", [0, -1, 1 << 160])
def test_bad_serials_are_refused(ca: x509.Certificate, rsa_key: rsa.RSAPrivateKey, serial: int) -> None:
    with pytest.raises(ValueError):
        profile.agent_builder(rsa_key.public_key(), ca, "example.org", "web-1", serial, NOW, TTL)


def _defective(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: rsa.RSAPrivateKey,
    mutate: Callable[[x509.CertificateBuilder], x509.CertificateBuilder],
    *,
    skip: str | None = None,
    serial: int = SERIAL + 1,
    ttl: timedelta = TTL,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """Rebuilds the agent template with one defect."""
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - profile.BACKDATE)
        .not_valid_after(NOW + ttl)
    )
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    parts = {
        "ski": (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        "bc": (x509.BasicConstraints(ca=False, path_length=None), True),
        "ku": (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
        "eku": (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        "san": (
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/agent/web-1")]),
            False,
        ),
        "aki": (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False),
    }
    for name, (ext, critical) in parts.items():
        if name != skip:
            b = b.add_extension(ext, critical=critical)
    return mutate(b).sign(signer or ca_key, hashes.SHA256())


def _same(b: x509.CertificateBuilder) -> x509.CertificateBuilder:
    return b


@pytest.mark.parametrize(
    "defect",
    [
        pytest.param({"skip": "bc"}, id="no-basic-constraints"),
        pytest.param({"skip": "ku"}, id="no-key-usage"),
        pytest.param({"skip": "eku"}, id="no-eku"),
        pytest.param({"skip": "san"}, id="no-san"),
        pytest.param({"skip": "aki"}, id="no-aki"),
        pytest.param({"skip": "ski"}, id="no-ski"),
        pytest.param({"ttl": TTL * 2}, id="lifetime-too-long"),
        pytest.param({"serial": 12345}, id="serial-too-short"),
        pytest.param(
            {"mutate": lambda b: b.add_extension(x509.OCSPNoCheck(), critical=False)}, id="extra-extension"
        ),
        pytest.param({"signer": "other"}, id="signed-by-another-key"),
        pytest.param({"key": "other"}, id="key-not-the-requested-one"),
    ],
)
def test_check_agent_certificate_catches(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    defect: dict,
) -> None:  # type: ignore[type-arg]
    defect = dict(defect)
    mutate = defect.pop("mutate", _same)
    if defect.pop("signer", None):
        defect["signer"] = ec.generate_private_key(ec.SECP256R1())
    key = other_rsa_key if defect.pop("key", None) else rsa_key
    cert = _defective(ca, ca_key, key, mutate, **defect)
    with pytest.raises(profile.ProfileError):
        profile.check_agent_certificate(
            cert, ca, trust_domain="example.org", name="web-1", public_key=rsa_key.public_key(), max_ttl=TTL
        )


def test_check_agent_certificate_accepts_the_undamaged_rebuild(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The defect table above is meaningful only if the same builder without a defect passes.
    cert = _defective(ca, ca_key, rsa_key, _same)
    profile.check_agent_certificate(
        cert, ca, trust_domain="example.org", name="web-1", public_key=rsa_key.public_key(), max_ttl=TTL
    )


@pytest.mark.parametrize("name, trust_domain", [("web-2", "example.org"), ("web-1", "other.org")])
def test_check_agent_certificate_catches_wrong_identity(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
    name: str,
    trust_domain: str,
) -> None:
    cert = _agent(ca, ca_key, rsa_key)
    with pytest.raises(profile.ProfileError):
        profile.check_agent_certificate(
            cert, ca, trust_domain=trust_domain, name=name, public_key=rsa_key.public_key(), max_ttl=TTL
        )


def test_server_template(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sans = ("kms.example.org", "10.0.0.7", "::1")
    cert = profile.server_builder(key.public_key(), ca, sans, SERIAL, NOW, TTL).sign(ca_key, hashes.SHA256())
    profile.check_server_certificate(cert, ca, sans, TTL)
    with pytest.raises(profile.ProfileError):
        profile.check_server_certificate(cert, ca, ("kms.example.org",), TTL)


def test_signature_hash_follows_the_key() -> None:
    assert isinstance(profile.signature_hash(ec.generate_private_key(ec.SECP384R1())), hashes.SHA384)
    assert isinstance(profile.signature_hash(ec.generate_private_key(ec.SECP256R1())), hashes.SHA256)
