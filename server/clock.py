"""Time as a dependency: classes take a Clock so tests can move it.

The store keeps times as Unix seconds; ``seconds`` and ``now_seconds`` are the one place a
datetime becomes one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "now_seconds", "seconds", "system_clock"]

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def seconds(moment: datetime) -> int:
    """Unix seconds, rounded down, as the store keeps times."""
    return int(moment.timestamp())


def now_seconds(clock: Clock) -> int:
    """The clock's current time in Unix seconds."""
    return seconds(clock())
