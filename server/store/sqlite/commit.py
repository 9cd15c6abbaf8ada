"""Group commit: every write queued while the previous commit was syncing joins one transaction.

Each write runs in its own savepoint (a failing write rolls back alone), and
all of them are acknowledged only after that one COMMIT is durable. Under load
this turns one fsync per write into one per batch, and batches are paced
(COMMIT_PACE) so that they grow; writes that come one at a time commit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

from kms.audit import AuditRecord
from kms.errors import KmsError
from server.store.records import AuditSink, StoreError
from server.store.sql.audit import INSERT_AUDIT
from server.store.sqlite.tx import SqliteTx

__all__ = ["COMMIT_PACE", "GroupCommit"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Under load (the last batch had more than one write), a batch begins no
# sooner than this after the one before, so that more writes share each
# fsync. A commit's fsync and its GIL hand-offs cost the server more CPU
# than the writes in it: FetchKey at full speed went from about 0.49 to 0.41
# ms of server CPU per call (bench fetch-key). When writes come one at a
# time, each commits at once.
COMMIT_PACE = 0.008


class _Write(NamedTuple):  # one per write: FetchKey's path (a tuple is the cheapest to build)
    fn: Callable[[SqliteTx], Any]
    future: asyncio.Future[Any]
    # False for a step that only reads and defers its rows: it needs no
    # savepoint, since it changes nothing until the batch's end.
    savepoint: bool
    # True for a step that changes what the read cache holds (keys, grants,
    # versions): the cache is cleared before it runs. So is it before every
    # step with a savepoint: any of them may revoke a certificate, which the
    # cache holds as unrevoked for the releases (sql/keys.py).
    invalidates: bool


def _settle(batch: list[_Write], outcomes: list[tuple[Any, BaseException | None]]) -> None:
    for write, (result, error) in zip(batch, outcomes, strict=True):
        if write.future.cancelled():  # the caller went away; the write stands (or not) all the same
            continue
        if error is None:
            write.future.set_result(result)
        else:
            write.future.set_exception(error)


def _batch_failure(exc: BaseException) -> BaseException:
    """The error each write of a failed batch gets: its own object (each is raised in its own task)."""
    if isinstance(exc, KmsError):
        return exc
    failure = StoreError(f"the store could not commit ({exc}): the action did not happen; retry")
    failure.__cause__ = exc
    return failure


class GroupCommit:
    def __init__(self, executor: ThreadPoolExecutor, tx: SqliteTx, writer_lock: int | None = None) -> None:
        self._executor = executor
        self._tx = tx
        # A descriptor of the store's writer lock file (see _transaction), or None.
        self._writer_lock = writer_lock
        self._queued: list[_Write] = []
        self._queued_lock = threading.Lock()
        # Where committed audit records are copied (set once, at start).
        self.sink: AuditSink | None = None
        # When the last batch began, and how many writes it had (set on the worker thread).
        self.last_commit = 0.0
        self.last_batch = 0
        self._timer: asyncio.TimerHandle | None = None  # a paced commit, not yet submitted
        self._closing = False

    def close(self) -> None:
        """Commits what is queued now (before the connection goes); refuses later writes."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._submit(asyncio.get_running_loop())

    async def write(
        self, fn: Callable[[SqliteTx], T], *, savepoint: bool = True, invalidates: bool = False
    ) -> T:
        """Runs fn on the worker thread in a transaction shared with other queued writes; returns once durable."""
        if self._closing:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queued_lock:
            self._queued.append(_Write(fn, future, savepoint, invalidates))
            first = len(self._queued) == 1
        if first:
            # Under load, let the batch gather (see COMMIT_PACE); the worker thread
            # stays free for reads meanwhile.
            wait = self.last_commit + COMMIT_PACE - time.monotonic() if self.last_batch > 1 else 0
            if wait > 0:
                self._timer = loop.call_later(wait, self._submit, loop)
            else:
                self._submit(loop)
        return await future

    def _submit(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        try:
            self._executor.submit(self._commit_queued, loop)
        except RuntimeError:  # the executor is shut down: fail what is queued rather than leave it waiting
            with self._queued_lock:
                batch, self._queued = self._queued, []
            _settle(batch, [(None, StoreError("store is closed")) for _ in batch])

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the worker thread: everything queued so far, in one transaction."""
        self.last_commit = time.monotonic()
        with self._queued_lock:
            batch, self._queued = self._queued, []
        self.last_batch = len(batch)
        outcomes = self._transaction(batch)
        with contextlib.suppress(RuntimeError):  # the loop closed while we committed (shutdown)
            loop.call_soon_threadsafe(_settle, batch, outcomes)

    def _transaction(self, writes: list[_Write]) -> list[tuple[Any, BaseException | None]]:
        """Runs each write in its own savepoint of one BEGIN IMMEDIATE ... COMMIT.

        A write that raises rolls back alone (with the rows it deferred and the
        chain head it moved); if the COMMIT fails, every write fails.
        """
        if self._writer_lock is None:
            return self._locked_transaction(writes)
        # Worker processes share the store (server/workers/): each still commits its queued
        # writes as one batch, and this lock hands the write lock from one process's batch to
        # the next's the moment it is released, where SQLite's busy handler would poll (and
        # sleep up to 100 ms between tries). BEGIN IMMEDIATE then never waits on another
        # process's batch; busy_timeout stays for other writers (a backup, a tool). Held until
        # the batch's audit records are copied out too, so the audit devices get them in order.
        fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        try:
            return self._locked_transaction(writes)
        finally:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    def _locked_transaction(self, writes: list[_Write]) -> list[tuple[Any, BaseException | None]]:
        tx = self._tx
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            db = tx.raw
            db.execute("BEGIN IMMEDIATE")
            tx.cache.check(db)
            for write in writes:
                outcomes.append(self._step(db, write))
            tx.later.flush(db)
            db.execute("COMMIT")
            committed = tx.later.rows(INSERT_AUDIT)
        except BaseException as exc:  # nothing of the batch is durable: every write fails
            tx.cache.clear()
            # A broken connection may refuse even this; the error below is what callers need.
            with contextlib.suppress(sqlite3.Error):
                if tx.raw.in_transaction:
                    tx.raw.execute("ROLLBACK")
            outcomes = [(None, _batch_failure(exc)) for _ in writes]
            committed = []
        finally:
            tx.chain_head = None
            tx.later.clear()
        if committed and self.sink is not None:
            # Before any write of the batch is acknowledged: a record whose action was
            # answered is outside the database too (see server/audit/devices.py).
            try:
                self.sink.write([AuditRecord(*row) for row in committed])
            except Exception:  # committed: the writes stand whatever a device does
                logger.exception("audit records were not copied to the audit devices")
        return outcomes

    def _step(self, db: sqlite3.Connection, write: _Write) -> tuple[Any, BaseException | None]:
        tx = self._tx
        head, mark = tx.chain_head, tx.later.mark()
        if write.invalidates or write.savepoint:
            tx.cache.clear()
        if write.savepoint:
            db.execute("SAVEPOINT write")
        try:
            outcome: tuple[Any, BaseException | None] = (write.fn(tx), None)
        except Exception as exc:
            if not db.in_transaction:
                # SQLite rolled the whole transaction back itself (I/O error, disk
                # full): the batch cannot go on, or later steps would each commit alone.
                raise
            if write.savepoint:
                db.execute("ROLLBACK TO write")
                tx.cache.clear()  # what the step cached may have been rolled back
            tx.chain_head = head
            tx.later.rollback_to(mark)
            outcome = (None, exc)
        if write.savepoint:
            db.execute("RELEASE write")
        return outcome
