"""The CA trust bundle: the active CA, each prepared CA, and the cross-certificates between them.

A cross-certificate (RFC 4210 §4.4, newWithOld) carries the new CA's subject and key,
with the old CA as issuer and signer: whoever trusts the old CA can check that the
new one is the same authority's, without trusting anything new on faith. The bundle
is PEM: the active CA first, then each newer CA followed by its cross-certificate.
Pure: the time to check validity at is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.identity import fingerprint

__all__ = [
    "BundleError",
    "TrustBundle",
    "TrustedCA",
    "check_cross",
    "cross_builder",
    "parse_bundle",
    "verify_bundle",
]

_BACKDATE = timedelta(seconds=60)


class BundleError(ValueError):
    """A bundle that cannot be parsed, or a CA in it that cannot be verified."""


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def cross_builder(
    new: x509.Certificate, old: x509.Certificate, serial: int, now: datetime
) -> x509.CertificateBuilder:
    """newWithOld: new's subject, key and CA extensions, issued by old; valid while both are."""
    not_after = min(new.not_valid_after_utc, old.not_valid_after_utc)
    bc = new.extensions.get_extension_for_class(x509.BasicConstraints).value
    ku = new.extensions.get_extension_for_class(x509.KeyUsage).value
    return (
        x509.CertificateBuilder()
        .subject_name(new.subject)
        .issuer_name(old.subject)
        .public_key(new.public_key())
        .serial_number(serial)
        .not_valid_before(max(now - _BACKDATE, old.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(_ski(new), critical=False)
        .add_extension(bc, critical=True)
        .add_extension(ku, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(old)), critical=False
        )
    )


def check_cross(cross: x509.Certificate, new: x509.Certificate, old: x509.Certificate, now: datetime) -> None:
    """That cross certifies new's key and subject, signed by old, valid at now. Raises BundleError."""
    if cross.public_key() != new.public_key() or cross.subject != new.subject:
        raise BundleError("the cross-certificate is not for this CA's key and subject")
    if cross.issuer != old.subject:
        raise BundleError("the cross-certificate was not issued by the trusted CA")
    try:
        cross.verify_directly_issued_by(old)
    except Exception as exc:  # InvalidSignature, ValueError, TypeError
        raise BundleError(
            f"the cross-certificate's signature does not verify under the trusted CA: {exc}"
        ) from None
    if not cross.not_valid_before_utc <= now <= cross.not_valid_after_utc:
        raise BundleError("the cross-certificate is not valid now")
    bc = cross.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not bc.ca:
        raise BundleError("the cross-certificate is not a CA certificate")


@dataclass(frozen=True)
class TrustBundle:
    cas: tuple[x509.Certificate, ...]  # self-signed, in bundle order (the active CA first)
    crosses: tuple[x509.Certificate, ...]


def parse_bundle(pem: str | bytes) -> TrustBundle:
    """Splits a PEM bundle into CA certificates and cross-certificates. Raises BundleError."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BundleError(f"not a PEM certificate bundle: {exc}") from None
    cas = tuple(c for c in certs if _self_signed(c))
    if not cas:
        raise BundleError("the bundle holds no CA certificate")
    return TrustBundle(cas, tuple(c for c in certs if not _self_signed(c)))


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # noqa: BLE001 - any failure: not self-signed (a cross-certificate)
        return False
    return True


@dataclass(frozen=True)
class TrustedCA:
    cert: x509.Certificate
    fingerprint: str
    vouched_by: str | None  # the fingerprint of the CA whose cross-certificate vouches for it; None: pinned


def verify_bundle(bundle: TrustBundle, pinned: x509.Certificate, now: datetime) -> list[TrustedCA]:
    """Every CA of the bundle, each pinned or vouched for by a cross-certificate from one already
    trusted (in bundle order). Raises BundleError for a CA that is neither."""
    trusted = {_der(pinned): TrustedCA(pinned, fingerprint(_der(pinned)), None)}
    waiting = [c for c in bundle.cas if _der(c) not in trusted]
    while waiting:
        vouched = [(ca, by) for ca in waiting if (by := _voucher(ca, bundle, trusted, now)) is not None]
        if not vouched:
            raise BundleError(
                f"CA {fingerprint(_der(waiting[0]))} has no valid cross-certificate from a trusted CA"
            )
        for ca, by in vouched:
            trusted[_der(ca)] = TrustedCA(ca, fingerprint(_der(ca)), by)
        waiting = [c for c in waiting if _der(c) not in trusted]
    return [trusted[_der(c)] for c in bundle.cas if _der(c) in trusted]


def _voucher(
    ca: x509.Certificate, bundle: TrustBundle, trusted: dict[bytes, TrustedCA], now: datetime
) -> str | None:
    for cross in bundle.crosses:
        for known in trusted.values():
            try:
                check_cross(cross, ca, known.cert, now)
            except BundleError:
                continue
            return known.fingerprint
    return None
