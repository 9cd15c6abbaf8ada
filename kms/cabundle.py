"""The CA trust bundle: the active CA, each prepared CA, and the cross-certificates between them.

A cross-certificate (RFC 4210 §4.4, newWithOld) carries the new CA's subject and key,
with the old CA as issuer and signer: whoever trusts the old CA can check that the
new one is the same authority's, without trusting anything new on faith. The bundle
is PEM: the active CA followed by its cross-certificate from the CA before it, each
retiring CA followed by one the active CA made for it (oldWithNew: for whoever trusts
only the active one), then each prepared CA followed by its cross-certificate. So a
holder of any one generation verifies all of them. Pure: the time to check validity at
is given.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    "verify_stored",
]

_BACKDATE = timedelta(seconds=60)


class BundleError(ValueError):
    """A bundle that cannot be parsed, or a CA in it that cannot be verified."""


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def cross_builder(
    new: x509.Certificate, old: x509.Certificate, serial: int, now: datetime, until: datetime | None = None
) -> x509.CertificateBuilder:
    """newWithOld: new's subject, key and CA extensions, issued by old; valid while both are (and,
    given until, no longer than that)."""
    not_after = min(new.not_valid_after_utc, old.not_valid_after_utc, *([until] if until else []))
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
    # The fingerprint of the CA whose cross-certificate vouches for it; None: trusted already (one of
    # the CAs the bundle was verified from).
    vouched_by: str | None


def verify_bundle(
    bundle: TrustBundle, trusted: x509.Certificate | Sequence[x509.Certificate], now: datetime
) -> list[TrustedCA]:
    """The bundle's CAs (in bundle order), each one of the trusted CAs or vouched for by a valid
    cross-certificate from one (trusted, or vouched for in turn).

    A CA of the bundle already expired at now is left out: it verifies nothing any more, and a
    server that has not retired it yet must not make the whole bundle fail. A trusted CA that is
    not in the bundle is not in the answer: the bundle is the new trust (SPIRE's model).

    Raises:
        BundleError: a CA valid now that is neither trusted nor vouched for, or no CA valid now.
    """
    given = [trusted] if isinstance(trusted, x509.Certificate) else list(trusted)
    known = {_der(c): TrustedCA(c, fingerprint(_der(c)), None) for c in given}
    live = [c for c in bundle.cas if now <= c.not_valid_after_utc]
    if not live:
        raise BundleError("no CA of the bundle is valid now")
    waiting = [c for c in live if _der(c) not in known]
    while waiting:
        vouched = [(ca, by) for ca in waiting if (by := _voucher(ca, bundle, known, now)) is not None]
        if not vouched:
            raise BundleError(
                f"CA {fingerprint(_der(waiting[0]))} has no valid cross-certificate from a trusted CA"
            )
        for ca, by in vouched:
            known[_der(ca)] = TrustedCA(ca, fingerprint(_der(ca)), by)
        waiting = [c for c in waiting if _der(c) not in known]
    return [known[_der(c)] for c in live]


def verify_stored(bundle: TrustBundle, now: datetime) -> list[TrustedCA]:
    """A bundle verified before (the agent's stored one), checked again: one family, every CA
    valid now reached from one of them through valid cross-certificates (an appended CA, a
    cross-certificate since expired or a damaged file fails).

    The CAs it was first verified from may be gone from it (retired), so they are no anchor here.

    Raises:
        BundleError: no CA of the bundle reaches every other.
    """
    first: BundleError | None = None
    for root in bundle.cas:
        try:
            return verify_bundle(bundle, root, now)
        except BundleError as exc:
            first = first or exc
    raise first or BundleError("the bundle holds no CA certificate")


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
