"""Durable writes whose in-memory follow-up must happen even if the caller goes away.

Once a write is queued it may commit whether or not the RPC that asked for it
is still waiting (a client timeout cancels the handler). What must follow a
commit in memory (the revoked map that authenticates every call, the watch
feed) is therefore applied by ``after_commit`` in the caller's task, or, if
the caller was cancelled meanwhile, from a callback when the write finishes.

In the usual case the follow-up runs synchronously right before the caller
returns, so the reply is on its way before the streams it woke get the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["after_commit"]

T = TypeVar("T")
R = TypeVar("R")

_running: set[asyncio.Future[Any]] = set()  # a reference, so no write is collected mid-way


async def after_commit(write: Awaitable[T], then: Callable[[T], R]) -> R:
    """Awaits write, then returns then(result); then runs exactly once if the write succeeds."""
    task = asyncio.ensure_future(write)
    try:
        result = await asyncio.shield(task)
    except asyncio.CancelledError:
        _running.add(task)

        def finish(done: asyncio.Future[T]) -> None:
            _running.discard(done)
            if not done.cancelled() and done.exception() is None:
                then(done.result())

        task.add_done_callback(finish)
        raise
    return then(result)
