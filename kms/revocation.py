"""Revocation reasons (RFC 5280 §5.3.1 CRLReason) by the names operators type."""

from __future__ import annotations

from cryptography import x509

from kms.errors import InvalidArgument

__all__ = ["REASONS", "parse_reason"]

# certificateHold and removeFromCRL are left out: revocation here is permanent.
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


def parse_reason(name: str) -> str:
    """Returns name if it is an RFC 5280 reason we accept (default: unspecified). Raises InvalidArgument."""
    if not name:
        return "unspecified"
    if name not in REASONS:
        raise InvalidArgument(f"reason {name!r} is not one of: {', '.join(REASONS)}")
    return name
