"""What an administrator types about keys: grants, disable reasons and version numbers, checked."""

from __future__ import annotations

from kms.errors import InvalidArgument
from kms.identity import validate_agent_name, validate_group
from server.store import Grant

__all__ = ["MAX_REASON", "MAX_VERSION", "check_version", "parse_disable_reason", "parse_grant"]

MAX_VERSION = 2**31 - 1


def parse_grant(text: str) -> Grant:
    """Parses ``agent:NAME`` or ``group:NAME``. Raises InvalidArgument."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("agent", "group"):
        raise InvalidArgument(f"grant {text!r} must be agent:NAME or group:NAME")
    (validate_agent_name if kind == "agent" else validate_group)(name)
    return Grant(kind, name)


# A disable reason is shown in listings, audit records and to every agent granted the key.
MAX_REASON = 200


def parse_disable_reason(text: str) -> str:
    """The reason for disabling a key, trimmed: one printable line of 1 to MAX_REASON characters.

    Raises InvalidArgument.
    """
    reason = text.strip()
    if not reason:
        raise InvalidArgument(
            "disabling a key needs --reason TEXT: agents granted the key and the audit trail are told why"
        )
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"--reason is {len(reason)} characters long: use at most {MAX_REASON}")
    if not reason.isprintable():
        raise InvalidArgument("--reason must be one line of printable text (no control characters)")
    return reason


def check_version(version: int, *, allow_current: bool) -> None:
    lowest = 0 if allow_current else 1
    if not lowest <= version <= MAX_VERSION:
        what = "0 (current) or a positive version" if allow_current else "a positive version"
        raise InvalidArgument(f"version {version} is out of range: use {what} up to {MAX_VERSION}")
