"""Names of things: agent names, groups, trust domains, SPIFFE IDs, CA fingerprints."""

from __future__ import annotations

import hashlib
import hmac
import re

from kms.errors import InvalidArgument

__all__ = [
    "MAX_GROUPS",
    "agent_spiffe_id",
    "fingerprint",
    "fingerprint_matches",
    "parse_agent_spiffe_id",
    "parse_fingerprint",
    "validate_agent_name",
    "validate_key_name",
    "validate_group",
    "validate_trust_domain",
]

MAX_GROUPS = 32
# Agent names become a CN (ub-common-name is 64, RFC 5280 Appendix A) and a
# SPIFFE path segment, so: lowercase DNS-label-like, 1-63 characters.
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
# SPIFFE trust domain: lowercase letters, digits, dots, dashes, underscores.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,253}[a-z0-9])?$")
# Key names travel in envelope headers (at most 255 bytes) and file names.
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


# "server" names the kms-server itself in key exchanges.
_RESERVED = frozenset({"server"})


def validate_agent_name(name: str) -> str:
    """Returns name if it is a valid agent name, else raises InvalidArgument."""
    if name in _RESERVED:
        raise InvalidArgument(f"agent name {name!r} is reserved: choose another name")
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"agent name {name!r} is invalid: use 1-63 lowercase letters, digits, '.', '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return name


def validate_group(group: str) -> str:
    """Returns group if it is a valid group name (same rules as agent names)."""
    if not _NAME.fullmatch(group):
        raise InvalidArgument(
            f"group {group!r} is invalid: use 1-63 lowercase letters, digits, '.', '-' or '_'"
        )
    return group


def validate_key_name(name: str) -> str:
    """Returns name if it is a valid key name, else raises InvalidArgument."""
    if not _KEY_NAME.fullmatch(name):
        raise InvalidArgument(
            f"key name {name!r} is invalid: use 1-128 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


def validate_trust_domain(trust_domain: str) -> str:
    """Returns trust_domain if it is a valid SPIFFE trust domain name."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise InvalidArgument(
            f"trust domain {trust_domain!r} is invalid: use lowercase letters, digits, '.', '-' or '_'"
        )
    return trust_domain


def agent_spiffe_id(trust_domain: str, name: str) -> str:
    """The URI SAN of an agent: spiffe://<trust-domain>/agent/<name>."""
    return f"spiffe://{trust_domain}/agent/{name}"


def parse_agent_spiffe_id(uri: str, trust_domain: str) -> str:
    """Returns the agent name in uri, which must be an agent ID in trust_domain.

    Raises:
        InvalidArgument: uri is not spiffe://<trust_domain>/agent/<valid name>.
    """
    prefix = f"spiffe://{trust_domain}/agent/"
    if not uri.startswith(prefix):
        raise InvalidArgument(f"{uri!r} is not an agent ID of trust domain {trust_domain!r}")
    return validate_agent_name(uri[len(prefix) :])


def fingerprint(cert_der: bytes) -> str:
    """The CA fingerprint as printed and pinned: sha256:<lowercase hex of the DER>."""
    return "sha256:" + hashlib.sha256(cert_der).hexdigest()


def parse_fingerprint(text: str) -> str:
    """Normalises a fingerprint given by an operator to sha256:<hex>.

    Accepts an optional ``sha256:`` prefix, upper case and colon separators
    (as ``openssl x509 -fingerprint`` prints them).
    """
    body = text.strip()
    if body.lower().startswith("sha256:"):
        body = body[len("sha256:") :]
    body = body.replace(":", "").lower()
    if not _FINGERPRINT.fullmatch(body):
        raise InvalidArgument(
            "CA fingerprint must be sha256: followed by 64 hex digits, as kms-server prints it"
        )
    return "sha256:" + body


def fingerprint_matches(cert_der: bytes, pinned: str) -> bool:
    """Constant-time comparison of a certificate's fingerprint with a pinned one."""
    return hmac.compare_digest(fingerprint(cert_der).encode(), parse_fingerprint(pinned).encode())
