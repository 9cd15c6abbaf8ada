"""Copies committed audit records to their sink in the order of their seqs, off the event loop.

PostgreSQL transactions commit one after another under the chain's lock,
but the tasks that committed them resume in whatever order the event loop
wakes them. Each transaction draws a ticket under the lock (so tickets follow
seqs within this process); its records go to the sink only after every
earlier ticket's records went, or that ticket was given up (its transaction
did not commit). One worker thread writes, in submission order, so a slow
fsync never stalls the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kms.audit import AuditRecord
from server.store.records import AuditSink

__all__ = ["InOrder"]


def _settle(done: asyncio.Future[None]) -> Callable[[asyncio.Future[None]], None]:
    def settle(_: asyncio.Future[None]) -> None:
        if not done.done():
            done.set_result(None)

    return settle


class InOrder:
    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-devices")
        self._next = 0  # the next ticket to draw
        self._head = 0  # the next ticket to hand to the sink
        # Tickets settled out of turn: their records (empty: given up) and who waits for them.
        self._ready: dict[int, tuple[Sequence[AuditRecord], asyncio.Future[None] | None]] = {}

    def reserve(self) -> int:
        ticket = self._next
        self._next += 1
        return ticket

    def abandon(self, ticket: int) -> None:
        """The ticket's transaction did not commit (or may not have): nothing to copy."""
        self._ready[ticket] = ((), None)
        self._drain()

    async def deliver(self, ticket: int, records: Sequence[AuditRecord]) -> None:
        """Returns once records (and every earlier ticket's) are with the sink."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready[ticket] = (records, done)
        self._drain()
        # A cancelled caller leaves the copy to finish on its own.
        await asyncio.shield(done)

    def _drain(self) -> None:
        while self._head in self._ready:
            records, done = self._ready.pop(self._head)
            self._head += 1
            if not records:
                if done is not None and not done.done():
                    done.set_result(None)
                continue
            written = asyncio.wrap_future(self._executor.submit(self._sink.write, records))
            if done is not None:
                written.add_done_callback(_settle(done))

    def close(self) -> None:
        """Waits for the copies already handed over."""
        self._executor.shutdown(wait=True)
