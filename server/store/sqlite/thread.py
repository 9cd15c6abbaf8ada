"""The store's one thread, which knows when it is idle: then the loop may use the connection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["StoreThread"]

T = TypeVar("T")


class StoreThread:
    """Runs jobs one at a time, in order. Submitted from the event loop only."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._lock = threading.Lock()
        self._pending = 0  # jobs submitted and neither finished nor cancelled before they ran

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Raises RuntimeError once shut down."""
        with self._lock:
            self._pending += 1
        try:
            future = self._executor.submit(self._job, fn, *args)
        except BaseException:
            self._done()
            raise
        # A job cancelled before it ran (its caller went away) never reaches _job's finally.
        future.add_done_callback(lambda f: self._done() if f.cancelled() else None)
        return future

    def _job(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    @property
    def idle(self) -> bool:
        """No job running or waiting: counted, not read off the last job, which may have been
        cancelled while an earlier one still runs."""
        with self._lock:
            return self._pending == 0

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
