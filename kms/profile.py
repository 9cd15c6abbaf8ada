"""Certificate profiles: templates built from our data only, and re-checks.

Issuing is three steps (STYLE 6): a builder from this module, the CA's
signature, then ``check_*`` re-asserting every extension and the lifetime
before the certificate leaves the CA. Nothing here draws randomness or reads
the clock: serials and ``now`` come in as arguments.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID, NameOID

from kms.identity import agent_spiffe_id

__all__ = [
    "BACKDATE",
    "IssuerKey",
    "ProfileError",
    "StatusUrls",
    "PublicKey",
    "agent_builder",
    "ca_builder",
    "check_agent_certificate",
    "check_ca_certificate",
    "check_server_certificate",
    "server_builder",
    "signature_hash",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
IssuerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Seconds of backdating so that a peer whose clock is slightly behind still
# accepts a fresh certificate.
BACKDATE = timedelta(seconds=60)
ORGANIZATION = "Seed KMS"


class ProfileError(Exception):
    """An issued certificate does not match its profile (a CA bug, never user input)."""


def signature_hash(key: IssuerKey) -> hashes.SHA256 | hashes.SHA384:
    """Hash used when key signs: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _not_after(now: datetime, ttl: timedelta, cap: datetime | None) -> datetime:
    end = now + ttl
    return min(end, cap) if cap is not None else end


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    serial: int,
    now: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """The one base builder: subject, issuer, key, serial, validity, SKI."""
    if serial <= 0 or serial.bit_length() > 159:
        # RFC 5280 §4.1.2.2: positive, at most 20 octets.
        raise ValueError("serial must be positive and at most 159 bits")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        # Short-lived certificates (tests, demos) backdate by a twentieth of
        # their life at most, so renewal at 2/3 still falls after issuance.
        .not_valid_before(now - min(BACKDATE, (not_after - now) / 20))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def ca_name(trust_domain: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Seed KMS CA {trust_domain}"),
        ]
    )


def ca_builder(
    public_key: PublicKey, trust_domain: str, serial: int, now: datetime, ttl: timedelta
) -> x509.CertificateBuilder:
    """Self-signed root: CA:true pathlen 0, keyCertSign+cRLSign (RFC 5280 §4.2.1.3, §4.2.1.9)."""
    name = ca_name(trust_domain)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        _base(name, name, public_key, serial, now, now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )


def server_builder(
    public_key: PublicKey,
    issuer: x509.Certificate,
    sans: tuple[str, ...],
    serial: int,
    now: datetime,
    ttl: timedelta,
) -> x509.CertificateBuilder:
    """The server's TLS certificate: serverAuth, DNS/IP SANs from the operator."""
    if not sans:
        raise ValueError("a server certificate needs at least one SAN")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])])
    return (
        _base(
            subject, issuer.subject, public_key, serial, now, _not_after(now, ttl, issuer.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key_encipherment=isinstance(public_key, rsa.RSAPublicKey)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False)
        .add_extension(_aki(issuer), critical=False)
    )


def agent_builder(
    public_key: rsa.RSAPublicKey,
    issuer: x509.Certificate,
    trust_domain: str,
    name: str,
    serial: int,
    now: datetime,
    ttl: timedelta,
    status: StatusUrls | None = None,
) -> x509.CertificateBuilder:
    """An agent's client certificate: CN=name, URI SAN spiffe://td/agent/name, clientAuth.

    With status URLs (the HTTP side port is on), it also names where to
    check it: a CRL distribution point (RFC 5280 §4.2.1.13) and an OCSP
    responder in authorityInfoAccess (§4.2.2.1).
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    uri = agent_spiffe_id(trust_domain, name)
    builder = (
        _base(
            subject, issuer.subject, public_key, serial, now, _not_after(now, ttl, issuer.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(_aki(issuer), critical=False)
    )
    if status is not None:
        builder = builder.add_extension(status.distribution_points(), critical=False).add_extension(
            status.authority_information_access(), critical=False
        )
    return builder


@dataclass(frozen=True)
class StatusUrls:
    """Where relying parties find revocation status: the CRL and the OCSP responder."""

    crl: str
    ocsp: str

    def distribution_points(self) -> x509.CRLDistributionPoints:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(self.crl)], None, None, None)
        return x509.CRLDistributionPoints([point])

    def authority_information_access(self) -> x509.AuthorityInformationAccess:
        return x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.ocsp)
                )
            ]
        )


def _key_usage(*, cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


# --- re-checks ---------------------------------------------------------------


@dataclass(frozen=True)
class _Expect:
    ca: bool
    key_usage: x509.KeyUsage
    eku: tuple[x509.ObjectIdentifier, ...] | None
    sans: tuple[x509.GeneralName, ...] | None
    subject: x509.Name
    status: StatusUrls | None = None


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ProfileError(what)


def _check_common(
    cert: x509.Certificate, issuer: x509.Certificate, expect: _Expect, max_ttl: timedelta
) -> None:
    _require(cert.version == x509.Version.v3, "not an X.509 v3 certificate")
    _require(
        cert.serial_number > 0 and 64 <= cert.serial_number.bit_length() <= 159,
        "serial is not 64-159 random bits",
    )
    _require(cert.subject == expect.subject, "subject differs from the profile")
    _require(cert.issuer == issuer.subject, "issuer is not the CA's subject")
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception as exc:  # InvalidSignature, ValueError, TypeError
        raise ProfileError(f"signature does not verify under the CA key: {exc}") from exc
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    _require(lifetime <= max_ttl + BACKDATE, "lifetime exceeds the configured maximum")
    _require(cert.not_valid_after_utc <= issuer.not_valid_after_utc, "certificate outlives its CA")

    expected_oids = {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
    if expect.eku is not None:
        expected_oids.add(ExtensionOID.EXTENDED_KEY_USAGE)
    if expect.sans is not None:
        expected_oids.add(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if expect.status is not None:
        expected_oids |= {ExtensionOID.CRL_DISTRIBUTION_POINTS, ExtensionOID.AUTHORITY_INFORMATION_ACCESS}
    _require({e.oid for e in cert.extensions} == expected_oids, "unexpected set of extensions")
    if expect.status is not None:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
        _require(cdp.value == expect.status.distribution_points(), "CRL distribution point differs")
        _require(aia.value == expect.status.authority_information_access(), "OCSP location differs")

    exts = cert.extensions
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    _require(bc.critical and bc.value.ca == expect.ca, "basicConstraints wrong or not critical")
    ku = exts.get_extension_for_class(x509.KeyUsage)
    _require(ku.critical and ku.value == expect.key_usage, "keyUsage wrong or not critical")
    ski = exts.get_extension_for_class(x509.SubjectKeyIdentifier)
    _require(
        ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()),
        "SKI does not match the key",
    )
    aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier)
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    _require(aki.value.key_identifier == issuer_ski.digest, "AKI does not match the CA's SKI")
    if expect.eku is not None:
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage)
        _require(tuple(eku.value) == expect.eku, "extendedKeyUsage differs from the profile")
    if expect.sans is not None:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName)
        _require(not san.critical, "SAN must not be critical when the subject is non-empty")
        _require(tuple(san.value) == expect.sans, "subjectAltName differs from the profile")


def check_ca_certificate(cert: x509.Certificate, max_ttl: timedelta) -> None:
    """Re-asserts the root profile. Raises ProfileError."""
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    _require(bc.path_length == 0, "CA path length must be 0: it issues only leaves")
    expect = _Expect(True, _key_usage(cert_sign=True), None, None, cert.issuer)
    _check_common(cert, cert, expect, max_ttl)


def check_server_certificate(
    cert: x509.Certificate, issuer: x509.Certificate, sans: tuple[str, ...], max_ttl: timedelta
) -> None:
    """Re-asserts the server TLS profile. Raises ProfileError."""
    key_enc = isinstance(cert.public_key(), rsa.RSAPublicKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])])
    expect = _Expect(
        False,
        _key_usage(key_encipherment=key_enc),
        (ExtendedKeyUsageOID.SERVER_AUTH,),
        tuple(_general_name(s) for s in sans),
        subject,
    )
    _check_common(cert, issuer, expect, max_ttl)


def check_agent_certificate(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    trust_domain: str,
    name: str,
    public_key: rsa.RSAPublicKey,
    max_ttl: timedelta,
    status: StatusUrls | None = None,
) -> None:
    """Re-asserts the agent profile, including that the key is the CSR's. Raises ProfileError."""
    _require(cert.public_key() == public_key, "certificate key is not the requested key")
    expect = _Expect(
        False,
        _key_usage(key_encipherment=True),
        (ExtendedKeyUsageOID.CLIENT_AUTH,),
        (x509.UniformResourceIdentifier(agent_spiffe_id(trust_domain, name)),),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        status,
    )
    _check_common(cert, issuer, expect, max_ttl)
