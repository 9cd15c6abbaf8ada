"""Revocation reasons (RFC 5280 §5.3.1 CRLReason) by the names operators type."""

from __future__ import annotations

from cryptography import x509

from kms.errors import InvalidArgument

__all__ = ["CA_COMPROMISE", "CRL_REASONS", "HOLD", "REASONS", "RELEASE", "parse_reason"]

# The one revocation that can be lifted (RFC 5280 §5.3.1 certificateHold).
HOLD = "certificateHold"
# The reason a release event carries: RFC 5280's name for "no longer revoked".
RELEASE = "removeFromCRL"
# The reason an emergency CA rotation (ca rotate --now --revoke-old) revokes the old CA's
# certificates with; an agent that hears its own revoked for it stops trusting that CA. Not an
# operator's reason for one certificate: the CA is compromised or it is not.
CA_COMPROMISE = "cACompromise"

# Final revocations, by the names operators type.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
# Every reason a certificate can be listed with, in the CRL and OCSP. removeFromCRL is
# left out: a released certificate is dropped from the next full CRL (RFC 5280 §5.3.1
# allows removeFromCRL only in delta CRLs, which openssl verify -crl_check does not read).
CRL_REASONS: dict[str, x509.ReasonFlags] = {
    **REASONS,
    CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    HOLD: x509.ReasonFlags.certificate_hold,
}


def parse_reason(name: str, *, allow_hold: bool = False) -> str:
    """Returns name if it is an RFC 5280 reason we accept (default: unspecified). Raises InvalidArgument.

    allow_hold: certificateHold is accepted too (certificates and agents can be held; key versions cannot).
    """
    if not name:
        return "unspecified"
    if name == HOLD and allow_hold:
        return name
    if name == CA_COMPROMISE:
        raise InvalidArgument(
            f"reason {CA_COMPROMISE} is the CA's, not one certificate's: when the CA key may have leaked,"
            " kms-server ca rotate --now --revoke-old revokes every certificate it signed with it"
        )
    if name not in REASONS:
        accepted = [*REASONS, HOLD] if allow_hold else list(REASONS)
        raise InvalidArgument(f"reason {name!r} is not one of: {', '.join(accepted)}")
    return name
