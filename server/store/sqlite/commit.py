"""Group commit: every write queued while the previous batch was committing joins one transaction.

Each write runs in its own savepoint (a failing write rolls back alone), and
all of them are acknowledged only after that one COMMIT is durable. Under load
this turns one fsync per write into one per batch, and batches are paced
(COMMIT_PACE) so that they grow; writes that come one at a time commit at once.

Where a batch runs: a batch of light writes (releases and audit records: no
savepoint, nothing the cache must forget) runs on the event loop when the store
thread is idle, and the WAL syncer's process makes it durable (walsync.py says
why). Any other batch, one that meets the store thread busy or another worker's
batch holding the writer lock for 10 ms, and every batch when audit devices are
set (their copy is made under the writer lock), runs on the store thread, which
syncs the WAL itself. Either way one batch is in flight at a time, and the connection
(``synchronous=NORMAL``: a COMMIT writes the WAL, the sync is ours) is used by one
thread at a time. Between a batch's COMMIT and its sync (about a millisecond) a read
may see its writes before they are acknowledged; any write that builds on them is
in the same WAL after them, so it is durable only once they are.
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
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from kms.audit import AuditRecord
from kms.errors import KmsError
from server.store.records import AuditSink, StoreError
from server.store.sql.audit import INSERT_AUDIT
from server.store.sqlite.thread import StoreThread
from server.store.sqlite.tx import SqliteTx
from server.store.sqlite.walsync import WalSyncer
from server.store.sqlite.walsync_process import Wal

__all__ = ["COMMIT_PACE", "LOCK_RETRY", "LOCK_TRIES", "GroupCommit"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Under load (the last batch had more than one write), a batch begins no
# sooner than this after the one before, so that more writes share each
# fsync. A commit's fsync and its GIL hand-offs cost the server more CPU
# than the writes in it: FetchKey at full speed went from about 0.49 to 0.41
# ms of server CPU per call (bench fetch-key). When writes come one at a
# time, each commits at once. With N worker processes each paces at N times
# this, so the store (one WAL, one disk) still syncs about as often as one
# process would, and each batch is as large: at half the pace, two workers'
# batches cost the server about 20 % more CPU per FetchKey (bench/RESULTS.md).
COMMIT_PACE = 0.008

# A batch for the loop that finds another worker's batch holding the writer lock tries again
# this often, this many times, before the store thread waits for the lock instead.
LOCK_RETRY = 0.0005
LOCK_TRIES = 20


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


def _settle(batch: list[_Write], outcomes: Outcomes) -> None:
    for write, (result, error) in zip(batch, outcomes, strict=True):
        if write.future.cancelled():  # the caller went away; the write stands (or not) all the same
            continue
        if error is None:
            write.future.set_result(result)
        else:
            write.future.set_exception(error)


Outcomes = list[tuple[Any, BaseException | None]]


def _batch_failure(exc: BaseException) -> BaseException:
    """The error each write of a failed batch gets: its own object (each is raised in its own task)."""
    if isinstance(exc, KmsError):
        return exc
    failure = StoreError(f"the store could not commit ({exc}): the action did not happen; retry")
    failure.__cause__ = exc
    return failure


def _not_durable(error: OSError, outcomes: Outcomes) -> Outcomes:
    """A failed WAL sync fails the batch's writes: they are committed, but a crash may lose them."""
    logger.critical(
        "the store's WAL could not be synced to disk (%s): recent changes may be lost in a crash", error
    )
    failure = StoreError(
        f"the store could not write this change to disk ({error.strerror}): it may be lost if the machine "
        "stops; check the disk, then check whether it took effect before retrying"
    )
    return [(result, failure if failed is None else failed) for result, failed in outcomes]


class GroupCommit:
    def __init__(
        self,
        thread: StoreThread,
        tx: SqliteTx,
        db: Path,
        writer_lock: int | None = None,
        syncer: WalSyncer | None = None,
        pace: float = COMMIT_PACE,
    ) -> None:
        self._thread = thread
        self.pace = pace
        self._tx = tx
        self._wal = Wal(str(db))  # synced by the store thread (the syncer has its own)
        # A descriptor of the store's writer lock file (see _commit_queued), or None.
        self._writer_lock = writer_lock
        self._syncer = syncer
        self._queued: list[_Write] = []
        self._queued_lock = threading.Lock()  # the store thread takes its batch itself
        self._in_flight = False  # a batch is committing; the next one starts when it settles
        self._drained = asyncio.Event()
        self._drained.set()
        # Where committed audit records are copied (set once, at start).
        self.sink: AuditSink | None = None
        # When the last batch began, and how many writes it had.
        self.last_commit = 0.0
        self.last_batch = 0
        self._timer: asyncio.TimerHandle | None = None  # a paced batch, not yet begun
        self._lock_waits = 0  # tries of the writer lock for the batch waiting to begin
        self._closing = False

    async def close(self) -> None:
        """Commits what is queued now (before the connection goes); refuses later writes."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._submit(asyncio.get_running_loop())
        await self._drained.wait()

    async def write(
        self, fn: Callable[[SqliteTx], T], *, savepoint: bool = True, invalidates: bool = False
    ) -> T:
        """Runs fn in a transaction shared with other queued writes; returns once durable."""
        if self._closing:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queued_lock:
            self._queued.append(_Write(fn, future, savepoint, invalidates))
            first = len(self._queued) == 1
        self._drained.clear()
        if first and not self._in_flight and self._timer is None:
            self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # Under load, let the batch gather (see COMMIT_PACE).
        wait = self.last_commit + self.pace - time.monotonic() if self.last_batch > 1 else 0
        if wait > 0 and not self._closing:
            self._timer = loop.call_later(wait, self._submit, loop)
        else:
            self._submit(loop)

    def _submit(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._queued:
            self._drained.set()
            return
        self._in_flight = True
        self.last_commit = time.monotonic()
        where = self._commit_inline(loop)
        if where == "loop":
            self._lock_waits = 0
            return
        if where == "locked" and self._lock_waits < LOCK_TRIES:
            # Another worker's batch is committing (its statements take a fraction of a
            # millisecond): try again soon, rather than hand this batch to the store thread.
            self._lock_waits += 1
            self._in_flight = False
            self._timer = loop.call_later(LOCK_RETRY, self._submit, loop)
            return
        self._lock_waits = 0
        try:
            # The thread takes what is queued when it begins: writes queued meanwhile join.
            self._thread.submit(self._commit_queued, loop)
        except RuntimeError:  # the thread is shut down: fail the batch rather than leave it waiting
            batch = self._take()
            self._settled(loop, batch, [(None, StoreError("store is closed")) for _ in batch])

    def _take(self) -> list[_Write]:
        with self._queued_lock:
            batch, self._queued = self._queued, []
        self.last_batch = len(batch)
        return batch

    def _settled(self, loop: asyncio.AbstractEventLoop, batch: list[_Write], outcomes: Outcomes) -> None:
        """On the loop: the batch is durable (or failed); the next one may begin."""
        _settle(batch, outcomes)
        self._in_flight = False
        if self._queued:
            self._schedule(loop)
        else:
            self._drained.set()

    # --- on the event loop --------------------------------------------------------------

    def _commit_inline(self, loop: asyncio.AbstractEventLoop) -> Literal["loop", "thread", "locked"]:
        """Commits a batch of light writes here, to be synced by the syncer ("loop"); else says
        whether the store thread must take it, or another process holds the writer lock.

        BEGIN IMMEDIATE does not wait: this server's other processes take the writer lock
        first, and nothing else writes a store whose server holds its data directory.
        """
        # With audit devices the batch's records are copied (an fsync'd file) under the writer
        # lock, in order across processes: that is the store thread's work, as is every batch then.
        if self._syncer is None or self._syncer.broken or self.sink is not None or not self._thread.idle:
            return "thread"
        if any(w.savepoint or w.invalidates for w in self._queued):  # the thread is idle: no race
            return "thread"
        if self._writer_lock is not None:
            try:
                fcntl.flock(self._writer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "locked"
        batch = self._take()
        outcomes, _ = self._transaction(batch)
        self._unlock()  # the next process's batch commits while this one syncs (one WAL)
        self._syncer.sync(lambda error: self._synced(loop, batch, outcomes, error))
        return "loop"

    def _synced(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Write], outcomes: Outcomes, error: OSError | None
    ) -> None:
        """On the loop: the syncer answered for a batch committed on the loop."""
        if error is not None and self._syncer is not None and self._syncer.broken:
            try:  # the child is gone: the store thread syncs instead
                self._thread.submit(self._finish_on_thread, loop, batch, outcomes, [], False)
                return
            except RuntimeError:
                pass  # the thread is shut down too: nothing is known to be on disk
        if error is not None:
            outcomes = _not_durable(error, outcomes)
        self._settled(loop, batch, outcomes)

    # --- on the store thread ------------------------------------------------------------

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        # Worker processes share the store (server/workers/): each still commits its queued
        # writes as one batch, and this lock hands the write lock from one process's batch to
        # the next's the moment it is released, where SQLite's busy handler would poll (and
        # sleep up to 100 ms between tries). BEGIN IMMEDIATE then never waits on another
        # process's batch; busy_timeout stays for other writers (a backup, a tool).
        batch = self._take()
        try:
            if self._writer_lock is not None:
                fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        except OSError as exc:
            outcomes: Outcomes = [(None, _batch_failure(exc)) for _ in batch]
            committed: list[AuditRecord] = []
        else:
            outcomes, committed = self._transaction(batch)
        self._finish_on_thread(loop, batch, outcomes, committed, self._keep_lock(committed))

    def _finish_on_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Write],
        outcomes: Outcomes,
        committed: list[AuditRecord],
        held: bool,
        sync: bool = True,
    ) -> None:
        """Syncs the WAL (unless the syncer did), copies the audit records out, unlocks, settles."""
        try:
            if sync:
                outcomes = self._sync_wal(outcomes)
            self._copy_out(committed)
        finally:
            if held:
                self._unlock()
        with contextlib.suppress(RuntimeError):  # the loop closed while we committed (shutdown)
            loop.call_soon_threadsafe(self._settled, loop, batch, outcomes)

    def _sync_wal(self, outcomes: Outcomes) -> Outcomes:
        try:
            size = self._wal.sync()
        except OSError as exc:
            return _not_durable(exc, outcomes)
        if self._wal.checkpoint_due(size):  # as SQLite's autocheckpoint would, which the store turns off
            with contextlib.suppress(sqlite3.Error):  # a later batch tries again
                self._tx.raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return outcomes

    def _copy_out(self, committed: list[AuditRecord]) -> None:
        if committed and self.sink is not None:
            # Before any write of the batch is acknowledged: a record whose action was
            # answered is outside the database too (see server/audit/devices.py).
            try:
                self.sink.write(committed)
            except Exception:  # committed: the writes stand whatever a device does
                logger.exception("audit records were not copied to the audit devices")

    def _keep_lock(self, committed: list[AuditRecord]) -> bool:
        """Right after COMMIT: whether the writer lock stays held for the audit devices' copy (so
        they get every process's records in order); else it is released now, and the next
        process's batch commits while this one syncs (one WAL: each sync covers what precedes)."""
        if committed and self.sink is not None:
            return True
        self._unlock()
        return False

    def _unlock(self) -> None:
        if self._writer_lock is not None:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    # --- the transaction, on whichever thread runs the batch ------------------------------

    def _transaction(self, writes: list[_Write]) -> tuple[Outcomes, list[AuditRecord]]:
        """Runs each write in its own savepoint of one BEGIN IMMEDIATE ... COMMIT; the outcomes,
        and the audit records committed.

        A write that raises rolls back alone (with the rows it deferred and the
        chain head it moved); if the COMMIT fails, every write fails.
        """
        tx = self._tx
        outcomes: Outcomes = []
        try:
            db = tx.raw
            db.execute("BEGIN IMMEDIATE")
            tx.cache.check(db)
            for write in writes:
                outcomes.append(self._step(db, write))
            tx.later.flush(db)
            db.execute("COMMIT")
            committed = [AuditRecord(*row) for row in tx.later.rows(INSERT_AUDIT)]
        except BaseException as exc:  # nothing of the batch is committed: every write fails
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
        return outcomes, committed

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
