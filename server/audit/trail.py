"""The audit trail: reading and checking it, and batched records of actions that write nothing else.

An action that changes the store appends its audit record in the same
transaction, so it is recorded exactly when it happens (server/store).
A key exchange with the server changes nothing: its record would cost a
transaction and an fsync of its own per handshake, so AuditBatcher collects
such records and appends them together, normally within ``delay``. Readers
of the trail flush it first, so they see every exchange already answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from kms.audit import AuditRecord, Break, check_chain
from kms.errors import InvalidArgument
from server.store import AuditEntry, Store, WriteOutcomeUnknown
from server.store.records import AUDIT_MARKER

__all__ = ["AUDIT_CHAIN_KEY_LABEL", "AuditBatcher", "AuditTrail"]

# The HKDF label of the audit chain's key (server/deployment/sealing.py): its own, so the key
# is independent of every other use of the master key.
AUDIT_CHAIN_KEY_LABEL = "audit-chain"

logger = logging.getLogger(__name__)

_PAGE = 1000


class AuditBatcher:
    """Appends records in batches, in the order they were added, by one writer.

    A batch goes once ``delay`` has passed since the writer last woke, or at
    once when ``max_batch`` records wait. A batch the store refuses is tried
    again, with backoff, until the store has refused writes for ``retry_for``
    (counted from the first refusal of the outage, not per batch: after that
    each batch gets one try until a write succeeds); later records wait behind
    it, so the chain keeps their order. It is not tried again when the store went
    away during its COMMIT (WriteOutcomeUnknown): it may have landed, and a
    second copy would record each exchange twice. At most ``max_pending``
    records wait; beyond that new ones are dropped and counted in the log.

    So a crash loses the records not yet written: normally those of about the
    last ``delay``; while the store refuses writes, all those waiting. Use it
    only for records of actions that leave no other trace in the store.
    """

    def __init__(
        self,
        store: Store,
        delay: float = 0.01,
        max_batch: int = 1000,
        retry_for: float = 30.0,
        max_pending: int = 100_000,
    ) -> None:
        self._store = store
        self._delay = delay
        self._max_batch = max_batch
        self._retry_for = retry_for
        self._max_pending = max_pending
        self._pending: list[AuditEntry] = []
        self._added = 0  # records accepted so far
        self._settled = 0  # of those, written or given up on (in order)
        self._dropped = 0  # refused by the max_pending bound, not yet logged
        self._hurry = asyncio.Event()  # a full batch or a flush: no more waiting
        self._writer: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._refusing_since: float | None = None  # the store's current outage began

    @property
    def pending(self) -> int:
        """Records accepted and not yet written or given up on."""
        return self._added - self._settled

    def add(self, entry: AuditEntry) -> None:
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            return
        self._pending.append(entry)
        self._added += 1
        if len(self._pending) >= self._max_batch:
            self._hurry.set()
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())

    async def flush(self) -> None:
        """Returns once every record added so far is durable (or its loss logged).

        Records added meanwhile are not waited for. A cancelled caller does not
        cancel the writes it waited for: the writer is a task of its own.
        """
        if self._settled >= self._added:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._added, done))
        self._hurry.set()
        self._ensure_writer()
        await done

    async def _write_pending(self) -> None:
        while self._pending:
            if not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._delay):
                        await self._hurry.wait()
            self._hurry.clear()
            batch = self._pending[: self._max_batch]
            await self._write(batch)
            del self._pending[: len(batch)]
            self._settled += len(batch)
            if len(self._pending) >= self._max_batch or any(n > self._settled for n, _ in self._waiters):
                self._hurry.set()
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiting = []
        for upto, done in self._waiters:
            if upto <= self._settled:
                if not done.done():  # a cancelled flush left its future cancelled
                    done.set_result(None)
            else:
                waiting.append((upto, done))
        self._waiters = waiting

    async def _write(self, batch: list[AuditEntry]) -> None:
        # Nobody awaits this write: the log is where a failure shows.
        if self._dropped:
            logger.error(
                "audit records lost: too many were waiting for the store", extra={"records": self._dropped}
            )
            self._dropped = 0
        pause = 0.1
        while True:
            try:
                await self._store.append_audits(batch)
                self._refusing_since = None
                return
            except asyncio.CancelledError:
                logger.error(
                    "audit records may be lost: their write was cancelled", extra={"records": len(batch)}
                )
                raise
            except WriteOutcomeUnknown as exc:
                logger.error(
                    "audit records may be lost: the store went away while they were committing",
                    extra={"records": len(batch), "error": str(exc)},
                )
                return
            except Exception as exc:
                now = time.monotonic()
                if self._refusing_since is None:
                    self._refusing_since = now
                if now + pause > self._refusing_since + self._retry_for:
                    logger.error(
                        "audit records lost: the store refused them",
                        extra={"records": len(batch), "error": str(exc)},
                    )
                    return
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)


class AuditTrail:
    """Reads the trail and checks its chain with the key (None: an unkeyed store, tests and tools)."""

    def __init__(self, store: Store, batcher: AuditBatcher | None = None, key: bytes | None = None) -> None:
        self._store = store
        self._batcher = batcher
        self._key = key

    async def records(self, after_seq: int = 0, limit: int = 0) -> AsyncIterator[AuditRecord]:
        """Records after after_seq, in order; at most limit of them (0: all)."""
        if after_seq < 0:
            raise InvalidArgument("--since must be 0 or a sequence number")
        if limit < 0:
            raise InvalidArgument("limit must be 0 (all) or a number of records")
        if self._batcher is not None:
            await self._batcher.flush()
        left = limit or -1
        while left and (
            page := await self._store.audit_after(after_seq, min(_PAGE, left) if left > 0 else _PAGE)
        ):
            for record in page:
                yield record
            after_seq = page[-1].seq
            left = max(left - len(page), 0) if left > 0 else left

    async def verify(self) -> tuple[Break | None, int]:
        """(the first record that does not check, or None; the number of records read)."""
        marker = await self._store.get_meta(AUDIT_MARKER)
        keyed_from = int(marker) if marker is not None and marker.isdigit() else None
        records = [r async for r in self.records()]
        return check_chain(records, self._key, keyed_from), len(records)
