"""One costly answer shared: computed once for every caller waiting on it, then reused a while.

For /metrics of several workers (server/ops/metrics.py): each scrape would ask
every worker for its samples (a collect, JSON and zlib on each one's loop) and
have the primary merge them all; a flood of anonymous GETs on the HTTP side
port must not become work for every worker and the supervisor. So one
computation is in flight at a time, shared by the callers that come meanwhile,
and its result serves the callers of the next ``fresh`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["Coalesced"]

T = TypeVar("T")


class Coalesced(Generic[T]):
    """Args:
    make: computes the value.
    fresh: seconds a value is reused, counted from when its computation began.
    clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, make: Callable[[], Awaitable[T]], fresh: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._make = make
        self._fresh = fresh
        self._clock = clock
        self._value: tuple[float, T] | None = None
        self._pending: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._value is not None and self._clock() - self._value[0] < self._fresh:
            return self._value[1]
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._compute())
            self._pending.add_done_callback(_retrieved)
        # Shielded: a caller that goes away (a scrape cancelled) does not cancel the others' answer.
        return await asyncio.shield(self._pending)

    async def _compute(self) -> T:
        began = self._clock()
        try:
            value = await self._make()
        finally:
            self._pending = None
        self._value = (began, value)
        return value


def _retrieved(done: asyncio.Future[Any]) -> None:
    """Marks a failure as seen even when every caller went away (no "never retrieved" warning)."""
    if not done.cancelled():
        done.exception()
