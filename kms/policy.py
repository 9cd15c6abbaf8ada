"""Certificate checks as small policy objects that raise (STYLE 8).

Each policy is ``verify(cert, now) -> None`` and raises CertificateRejected
(an Unauthenticated) with a reason. They are written once and reused for mTLS
callers, handshake peers and signers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from kms.errors import InvalidArgument, Unauthenticated
from kms.identity import parse_agent_spiffe_id

__all__ = [
    "AgentIdentity",
    "AllOf",
    "CertificateRejected",
    "ChainsTo",
    "ClientAuth",
    "Policy",
    "agent_name_of",
    "issued_by",
]


class CertificateRejected(Unauthenticated):
    """A certificate failed a policy."""


class Policy(Protocol):
    def verify(self, cert: x509.Certificate, now: datetime) -> None: ...


class ChainsTo:
    """Chains to one of the given CA certificates and is valid at ``now``.

    Uses cryptography's verifier (RFC 5280 path validation with a
    client-certificate policy), never a hand-written walk. A refusal says which
    of the two failed; advice (what the holder of the certificate should do) is
    added only where it fits: "enroll again" is right for a caller's own
    certificate, wrong for a signature made in another deployment.
    """

    def __init__(self, roots: Sequence[x509.Certificate], advice: str | None = None) -> None:
        if not roots:
            raise ValueError("ChainsTo needs at least one root")
        self._roots = list(roots)
        self._store = Store(self._roots)
        self._advice = advice

    def verify(self, cert: x509.Certificate, now: datetime) -> None:
        verifier = PolicyBuilder().store(self._store).time(now).build_client_verifier()
        try:
            verifier.verify(cert, [])
        except VerificationError as exc:
            reason = (
                self._why(cert, now) or f"certificate does not chain to this CA or is not valid now ({exc})"
            )
            raise CertificateRejected(f"{reason}; {self._advice}" if self._advice else reason) from exc

    def _why(self, cert: x509.Certificate, now: datetime) -> str | None:
        """Which check failed, in words, when it is one of the two common ones."""
        if not any(issued_by(cert, root) for root in self._roots):
            issuer = cert.issuer.rfc4514_string()
            return f"certificate was not issued by this CA but by another (named {issuer!r}), even if the names match"
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return (
                f"certificate is not valid at {now:%Y-%m-%dT%H:%M:%SZ} (valid from"
                f" {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
            )
        return None


def issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    """Whether root's key signed cert (and root's subject is cert's issuer)."""
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class ClientAuth:
    """Carries the clientAuth extended key usage."""

    def verify(self, cert: x509.Certificate, now: datetime) -> None:
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise CertificateRejected("certificate is not a client certificate (no clientAuth usage)")


class AgentIdentity:
    """Names exactly one agent of the trust domain: spiffe://<td>/agent/<name>."""

    def __init__(self, trust_domain: str, name: str | None = None) -> None:
        self._trust_domain = trust_domain
        self._name = name

    def verify(self, cert: x509.Certificate, now: datetime) -> None:
        name = agent_name_of(cert, self._trust_domain)
        if self._name is not None and name != self._name:
            raise CertificateRejected(f"certificate names agent {name!r}, expected {self._name!r}")


class AllOf:
    """Every policy must pass. An empty AllOf is a programming error, not an allow-all."""

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ValueError("AllOf needs at least one policy")
        self._policies = policies

    def verify(self, cert: x509.Certificate, now: datetime) -> None:
        for policy in self._policies:
            policy.verify(cert, now)


def agent_name_of(cert: x509.Certificate, trust_domain: str) -> str:
    """The agent name in cert's only URI SAN. Raises CertificateRejected."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateRejected("certificate has no agent ID (URI SAN)") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(list(san)) != 1:
        raise CertificateRejected("certificate must carry exactly one agent ID and no other name")
    try:
        return parse_agent_spiffe_id(uris[0], trust_domain)
    except InvalidArgument as exc:
        raise CertificateRejected(exc.message) from exc
