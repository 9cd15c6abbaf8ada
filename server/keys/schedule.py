"""A key's schedule as administrators set it (expiry, rotation period), checked on the server.

The CLI checks what it can before calling; these checks are the ones that hold for
every client of the admin API. Times are Unix seconds.
"""

from __future__ import annotations

from datetime import timedelta

from kms.durations import format_duration
from kms.errors import InvalidArgument
from kms.times import iso
from server.store.records import ScheduleChange

__all__ = [
    "MAX_EXPIRES_AT",
    "MAX_PERIOD",
    "check_expiry",
    "check_period",
    "creation_schedule",
    "describe",
    "schedule_change",
]

# 9999-12-31T23:59:59Z: the last time ISO 8601 writes with four digits.
MAX_EXPIRES_AT = 253_402_300_799
# A hundred years: longer is "never", which is what no period says.
MAX_PERIOD = 100 * 365 * 86_400


def check_expiry(expires_at: int, now: int) -> int:
    """An expiry time, which must be after now. Raises InvalidArgument."""
    if expires_at > MAX_EXPIRES_AT:
        raise InvalidArgument(f"expiry {expires_at} is after 9999-12-31: give an earlier time, or no expiry")
    if expires_at <= now:
        when = iso(expires_at) if expires_at >= 0 else str(expires_at)
        raise InvalidArgument(
            f"expiry {when} is not in the future (now is {iso(now)}): give a later time, like --expires-in 90d"
        )
    return expires_at


def check_period(seconds: int, minimum: int) -> int:
    """A rotation period in seconds, at least minimum (the server's min_rotation_period).

    Raises InvalidArgument.
    """
    if seconds <= 0:
        raise InvalidArgument(
            f"rotation period {seconds}s must be longer than zero, like 30d (--no-rotation stops rotating)"
        )
    if seconds < minimum:
        shortest = format_duration(timedelta(seconds=minimum))
        raise InvalidArgument(
            f"rotation period {format_duration(timedelta(seconds=seconds))} is shorter than this server's"
            f" minimum of {shortest} (setting min-rotation-period): rotate every {shortest} or less often"
        )
    if seconds > MAX_PERIOD:
        raise InvalidArgument(
            f"rotation period {seconds}s is longer than 100 years: use --no-rotation instead"
        )
    return seconds


def schedule_change(
    expires_at: int | None, rotate_every: int | None, now: int, minimum: int
) -> ScheduleChange:
    """What SetKey asks, checked: None leaves a field as it is, 0 clears it.

    Raises InvalidArgument (also when nothing would change).
    """
    if expires_at is None and rotate_every is None:
        raise InvalidArgument(
            "nothing to change: give --expires, --expires-in or --no-expiry,"
            " and/or --rotate-every or --no-rotation"
        )
    return ScheduleChange(
        set_expiry=expires_at is not None,
        expires_at=check_expiry(expires_at, now) if expires_at else None,
        set_rotation=rotate_every is not None,
        rotate_every=check_period(rotate_every, minimum) if rotate_every else None,
    )


def creation_schedule(expires_at: int, rotate_every: int, now: int, minimum: int) -> ScheduleChange:
    """What CreateKey asks, checked: 0 is none (no expiry, rotation by hand only). Raises InvalidArgument."""
    return ScheduleChange(
        set_expiry=bool(expires_at),
        expires_at=check_expiry(expires_at, now) if expires_at else None,
        set_rotation=bool(rotate_every),
        rotate_every=check_period(rotate_every, minimum) if rotate_every else None,
    )


def describe(change: ScheduleChange) -> str:
    """What changed, for the audit record and the log (never a secret)."""
    parts = []
    if change.set_expiry:
        parts.append(f"expires_at:{iso(change.expires_at) if change.expires_at else 'never'}")
    if change.set_rotation:
        period = change.rotate_every
        parts.append(f"rotate_every:{format_duration(timedelta(seconds=period)) if period else 'none'}")
    return " ".join(parts)
