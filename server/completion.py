"""Durable writes whose in-memory follow-up must happen even if the caller goes away.

Once a write is queued it may commit whether or not the RPC that asked for it
is still waiting (a client timeout cancels the handler). What must follow a
commit in memory (the revoked map that authenticates every call, the watch
feed) therefore runs in a task of its own that the caller's cancellation
does not reach.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["to_completion"]

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()  # a reference, so no task is collected mid-way


def _settled(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failure nobody awaited is not reported twice


async def to_completion(work: Coroutine[Any, Any, T]) -> T:
    """Runs work to its end; a cancelled caller stops waiting, the work does not stop."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_settled)
    return await asyncio.shield(task)
