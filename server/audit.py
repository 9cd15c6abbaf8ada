"""The audit trail: reading and checking it, and batched records of actions that write nothing else.

An action that changes the store appends its audit record in the same
transaction, so it is recorded exactly when it happens (server/store).
A key exchange with the server changes nothing: its record would cost a
transaction and an fsync of its own per handshake, so AuditBatcher collects
such records and appends them together, at most ``delay`` later. Readers
of the trail flush it first, so they see every exchange already answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from kms.audit import AuditRecord, first_break
from kms.errors import InvalidArgument
from server.store import AuditEntry, Store

__all__ = ["AuditBatcher", "AuditTrail"]

logger = logging.getLogger(__name__)

_PAGE = 1000
_RETRY_PAUSE = 0.1


class AuditBatcher:
    """Appends records in batches: one transaction per ``delay`` (or per ``max_batch`` records).

    A crash loses at most the records of about the last ``delay``, and a batched
    record may follow in the chain one of an action up to ``delay`` later;
    use it only for records of actions that leave no other trace in the store.
    """

    def __init__(self, store: Store, delay: float = 0.01, max_batch: int = 1000) -> None:
        self._store = store
        self._delay = delay
        self._max_batch = max_batch
        self._pending: list[AuditEntry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()

    def add(self, entry: AuditEntry) -> None:
        self._pending.append(entry)
        if len(self._pending) >= self._max_batch:
            self._start_write()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._start_write)

    def _start_write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._write(batch))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, batch: list[AuditEntry]) -> None:
        # Nobody awaits this write (flush waits without cancelling it): the log is
        # where a failure shows. One retry covers a store that blinked (a busy
        # SQLite file, a PostgreSQL failover).
        for attempt in (1, 2):
            try:
                await self._store.append_audits(batch)
                return
            except asyncio.CancelledError:
                logger.error(
                    "audit records may be lost: their write was cancelled", extra={"records": len(batch)}
                )
                raise
            except Exception as exc:
                if attempt == 2:
                    logger.error(
                        "audit records lost: the store refused them twice",
                        extra={"records": len(batch), "error": str(exc)},
                    )
                    return
                await asyncio.sleep(_RETRY_PAUSE)

    async def flush(self) -> None:
        """Returns once every record added so far is durable (or its failure logged).

        A cancelled caller does not cancel the writes it waited for.
        """
        self._start_write()
        if self._writing:
            await asyncio.wait(set(self._writing))


class AuditTrail:
    def __init__(self, store: Store, batcher: AuditBatcher | None = None) -> None:
        self._store = store
        self._batcher = batcher

    async def records(self, after_seq: int = 0) -> AsyncIterator[AuditRecord]:
        if after_seq < 0:
            raise InvalidArgument("--since must be 0 or a sequence number")
        if self._batcher is not None:
            await self._batcher.flush()
        while page := await self._store.audit_after(after_seq, _PAGE):
            for record in page:
                yield record
            after_seq = page[-1].seq

    async def verify(self) -> tuple[int | None, int]:
        """(first bad sequence number or None, number of records read)."""
        records = [r async for r in self.records()]
        return first_break(records), len(records)
