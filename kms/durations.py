"""Human durations for flags and environment variables: 90s, 15m, 24h, 7d."""

from __future__ import annotations

import re
from datetime import timedelta

from kms.errors import InvalidArgument

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^(\d{1,9})([smhd])$")


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """Parses a single-unit duration such as ``15m``.

    Raises:
        InvalidArgument: the text is not <digits><s|m|h|d> or is zero.
    """
    match = _PATTERN.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"{what} {text!r} is not a duration: use a number and s, m, h or d, like 15m")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise InvalidArgument(f"{what} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Formats a duration with the largest unit that divides it exactly."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
