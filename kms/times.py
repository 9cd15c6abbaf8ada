"""Times as every command, log line, audit object and error message prints them: ISO 8601 in
UTC, to the second, with a Z; and, for people at a terminal, relative to now ("in 3 d")."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["ISO_FORMAT", "iso", "iso_datetime", "relative", "span"]

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(ts: int) -> str:
    """Unix seconds, e.g. 2027-06-30T00:00:00Z."""
    return datetime.fromtimestamp(ts, UTC).strftime(ISO_FORMAT)


def iso_datetime(at: datetime) -> str:
    """A datetime (e.g. a certificate's not_valid_after_utc) in UTC; a naive one is taken as UTC."""
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)).strftime(ISO_FORMAT)


# (limit, seconds per unit, unit): a span below the limit is counted in that unit, rounded down.
_UNITS = (
    (60, 1, "s"),
    (3600, 60, "min"),
    (2 * 86_400, 3600, "h"),
    (730 * 86_400, 86_400, "d"),
)


def span(seconds: int) -> str:
    """A length of time as a person reads it at a glance: 45 s, 12 min, 5 h, 3 d, 2 y (rounded down)."""
    seconds = abs(seconds)
    for limit, unit, name in _UNITS:
        if seconds < limit:
            return f"{seconds // unit} {name}"
    return f"{seconds // (365 * 86_400)} y"


def relative(ts: int, now: int) -> str:
    """Unix seconds as seen from now: 'in 3 d', '2 h ago', or 'now' within a second.

    Terminals show it ("expires in 3 d", "revoked 2 h ago"); piped output keeps iso(), which
    does not change from one run to the next.
    """
    if ts == now:
        return "now"
    return f"in {span(ts - now)}" if ts > now else f"{span(now - ts)} ago"
