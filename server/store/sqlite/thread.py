"""The store's one thread, which knows when it is idle: then the loop may use the connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["StoreThread"]

T = TypeVar("T")


class StoreThread:
    """Runs jobs one at a time, in order. Submitted from the event loop only."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._last: Future[Any] | None = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Raises RuntimeError once shut down."""
        future = self._executor.submit(fn, *args)
        self._last = future
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    @property
    def idle(self) -> bool:
        """No job running or waiting (jobs run in order: the last one submitted has finished)."""
        return self._last is None or self._last.done()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
