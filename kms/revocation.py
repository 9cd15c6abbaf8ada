"""Revocation reasons (RFC 5280 §5.3.1 CRLReason) by the names operators type."""

from __future__ import annotations

from cryptography import x509

from kms.errors import InvalidArgument

__all__ = ["CRL_REASONS", "HOLD", "REASONS", "RELEASE", "parse_reason"]

# The one revocation that can be lifted (RFC 5280 §5.3.1 certificateHold).
HOLD = "certificateHold"
# The reason a release event carries: RFC 5280's name for "no longer revoked".
RELEASE = "removeFromCRL"

# Final revocations, by the names operators type.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
# Every reason a certificate can be listed with, in the CRL and OCSP. removeFromCRL is
# left out: a released certificate is dropped from the next full CRL (RFC 5280 §5.3.1
# allows removeFromCRL only in delta CRLs, which openssl verify -crl_check does not read).
CRL_REASONS: dict[str, x509.ReasonFlags] = {**REASONS, HOLD: x509.ReasonFlags.certificate_hold}


def parse_reason(name: str, *, allow_hold: bool = False) -> str:
    """Returns name if it is an RFC 5280 reason we accept (default: unspecified). Raises InvalidArgument.

    allow_hold: certificateHold is accepted too (certificates and agents can be held; key versions cannot).
    """
    if not name:
        return "unspecified"
    if name == HOLD and allow_hold:
        return name
    if name not in REASONS:
        accepted = [*REASONS, HOLD] if allow_hold else list(REASONS)
        raise InvalidArgument(f"reason {name!r} is not one of: {', '.join(accepted)}")
    return name
