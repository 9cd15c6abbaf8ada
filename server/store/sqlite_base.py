"""The SQLite store's plumbing: one worker thread that owns the connection, and transactions.

Writes are group-committed: every write queued while the previous commit was
syncing joins one transaction, each in its own savepoint (a failing write
rolls back alone), and all of them are acknowledged only after that one
COMMIT is durable. Under load this turns one fsync per write into one per
batch, and batches are paced (COMMIT_PACE) so that they grow; writes that
come one at a time commit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kms.audit import GENESIS, KEYED_ACTION, KEYED_ACTOR, AuditRecord, extend, keyed_object
from kms.errors import KmsError
from server.store.base import AUDIT_MARKER, Audit, AuditEntry, AuditSink, StoreError, audit_entries

__all__ = ["SqliteBase"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_INSERT_AUDIT = "INSERT INTO audit(seq, at, actor, action, object, outcome, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

_READ_CACHE_SIZE = 10_000
# Under load (the last batch had more than one write), a batch begins no
# sooner than this after the one before, so that more writes share each
# fsync. A commit's fsync and its GIL hand-offs cost the server more CPU
# than the writes in it: FetchKey at full speed went from about 0.49 to 0.41
# ms of server CPU per call (bench fetch-key). When writes come one at a
# time, each commits at once.
COMMIT_PACE = 0.008


@dataclass(frozen=True)
class _Step:
    fn: Callable[[sqlite3.Connection], Any]
    audit: Audit
    # False for a step that only reads and defers its rows (see _defer): it
    # needs no savepoint, since it changes nothing until the batch's end.
    savepoint: bool = True
    # True for a step that changes what the read cache holds (keys, grants,
    # versions): the cache is cleared before it runs.
    invalidates: bool = False


@dataclass(frozen=True)
class _Write:
    step: _Step
    future: asyncio.Future[Any]


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


class SqliteBase:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._queued: list[_Write] = []
        self._queued_lock = threading.Lock()
        # Worker-thread state. The audit chain's head, inside a transaction only.
        self._audit_head: tuple[int, bytes] | None = None
        # The chain key (None: unkeyed, format v1: stores opened by tests and tools)
        # and where committed records are copied; both set once, at start.
        self._audit_key: bytes | None = None
        self._audit_sink: AuditSink | None = None
        # Derived reads that hot writes repeat (release authorizations). Cleared by
        # every write that could change them, by any rollback, and when another
        # connection has written, so a hit always equals what the query would say.
        self._read_cache: dict[Hashable, Any] = {}
        self._data_version: int | None = None
        # INSERT statement -> rows, for the transaction in progress (see _defer).
        self._deferred: dict[str, list[tuple[Any, ...]]] = {}
        # When the last batch began, and how many writes it had (set on the worker thread).
        self._last_commit = 0.0
        self._last_batch = 0
        self._commit_timer: asyncio.TimerHandle | None = None  # a paced commit, not yet submitted
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        if self._commit_timer is not None:  # commit what is queued now, before the connection goes
            self._commit_timer.cancel()
            self._submit_commit(asyncio.get_running_loop())
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is closed")
        return self._conn

    async def _write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        audit: Audit = None,
        *,
        savepoint: bool = True,
        invalidates: bool = False,
    ) -> T:
        """Runs fn in a transaction (shared with other queued writes); returns once it is durable.

        As with _tx, a result of None appends no audit record.
        """
        if self._closing:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queued_lock:
            self._queued.append(_Write(_Step(fn, audit, savepoint, invalidates), future))
            first = len(self._queued) == 1
        if first:
            # Under load, let the batch gather (see COMMIT_PACE); the worker thread
            # stays free for reads meanwhile.
            wait = self._last_commit + COMMIT_PACE - time.monotonic() if self._last_batch > 1 else 0
            if wait > 0:
                self._commit_timer = loop.call_later(wait, self._submit_commit, loop)
            else:
                self._submit_commit(loop)
        return await future

    def _submit_commit(self, loop: asyncio.AbstractEventLoop) -> None:
        self._commit_timer = None
        try:
            self._executor.submit(self._commit_queued, loop)
        except RuntimeError:  # the executor is shut down: fail what is queued rather than leave it waiting
            with self._queued_lock:
                batch, self._queued = self._queued, []
            _settle(batch, [(None, StoreError("store is closed")) for _ in batch])

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the worker thread: everything queued so far, in one transaction."""
        self._last_commit = time.monotonic()
        with self._queued_lock:
            batch, self._queued = self._queued, []
        self._last_batch = len(batch)
        outcomes = self._transaction([write.step for write in batch])
        with contextlib.suppress(RuntimeError):  # the loop closed while we committed (shutdown)
            loop.call_soon_threadsafe(_settle, batch, outcomes)

    def _tx(
        self, fn: Callable[[sqlite3.Connection], T], audit: Audit = None, *, invalidates: bool = False
    ) -> T:
        """Runs fn alone in one transaction, now (on the worker thread)."""
        ((result, error),) = self._transaction([_Step(fn, audit, invalidates=invalidates)])
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    def _transaction(self, writes: list[_Step]) -> list[tuple[Any, BaseException | None]]:
        """Runs each write in its own savepoint of one BEGIN IMMEDIATE ... COMMIT.

        The audit entry of a write, if any, is appended with it, so an action is
        recorded exactly when it happens. A result of None means nothing happened
        (an idempotent repeat, a refused token), and appends nothing. A write
        that raises rolls back alone; if the COMMIT fails, every write fails.
        Deferred rows (audit records, release records) are inserted with one
        executemany per table just before the COMMIT: each statement crosses
        the GIL twice, and the event loop holds it between.
        """
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            # Another connection wrote (a tool, a restore): what we cached may be stale.
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._read_cache.clear()
                self._data_version = version
            for step in writes:
                head = self._audit_head
                deferred = {sql: len(rows) for sql, rows in self._deferred.items()}
                if step.invalidates:
                    self._read_cache.clear()
                if step.savepoint:
                    db.execute("SAVEPOINT write")
                try:
                    result = step.fn(db)
                    for entry in audit_entries(step.audit, result):
                        self._append_audit(db, entry)
                except Exception as exc:
                    if not db.in_transaction:
                        # SQLite rolled the whole transaction back itself (I/O error, disk
                        # full): the batch cannot go on, or later steps would each commit alone.
                        raise
                    if step.savepoint:
                        db.execute("ROLLBACK TO write")
                        self._read_cache.clear()  # what the step cached may have been rolled back
                    self._audit_head = head
                    for sql, rows in self._deferred.items():
                        del rows[deferred.get(sql, 0) :]
                    outcomes.append((None, exc))
                else:
                    outcomes.append((result, None))
                if step.savepoint:
                    db.execute("RELEASE write")
            for sql, rows in self._deferred.items():
                if rows:
                    db.executemany(sql, rows)
            db.execute("COMMIT")
            committed = self._deferred.get(_INSERT_AUDIT, [])
        except BaseException as exc:  # nothing of the batch is durable: every write fails
            self._read_cache.clear()
            # A broken connection may refuse even this; the error below is what callers need.
            with contextlib.suppress(sqlite3.Error):
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            outcomes = [(None, _batch_failure(exc)) for _ in writes]
            committed = []
        finally:
            self._audit_head = None
            self._deferred.clear()
        if committed and self._audit_sink is not None:
            # Before any write of the batch is acknowledged: a record whose action was
            # answered is outside the database too (see server/audit/devices.py).
            try:
                self._audit_sink.write([AuditRecord(*row) for row in committed])
            except Exception:  # committed: the writes stand whatever a device does
                logger.exception("audit records were not copied to the audit devices")
        return outcomes

    def _remember(self, key: Hashable, value: Any) -> None:
        """Caches a derived read (on the worker thread); bounded by starting over."""
        if len(self._read_cache) >= _READ_CACHE_SIZE:
            self._read_cache.clear()
        self._read_cache[key] = value

    def _defer(self, sql: str, row: tuple[Any, ...]) -> None:
        """An INSERT into a table no write of this batch reads, run at the batch's end."""
        self._deferred.setdefault(sql, []).append(row)

    def _append_audit(self, db: sqlite3.Connection, entry: AuditEntry) -> None:
        if self._audit_head is None:  # read once per transaction, then carried along
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            self._audit_head = (last[0], bytes(last[1])) if last else (0, GENESIS)
        (record,) = extend(
            self._audit_key,
            *self._audit_head,
            [(entry.at, entry.actor, entry.action, entry.object, entry.outcome)],
        )
        self._defer(_INSERT_AUDIT, tuple(vars(record).values()))
        self._audit_head = (record.seq, record.hash)

    async def open_audit_chain(self, key: bytes, now: int, sink: AuditSink | None = None) -> int | None:
        self._audit_key, self._audit_sink = key, sink

        def q(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT value FROM meta WHERE key=?", (AUDIT_MARKER,)).fetchone()
            if row is None or (row[0] != "pending" and not row[0].isdigit()):
                return None
            if row[0] != "pending":
                return int(row[0])
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0]
            first = int(last) + 1
            db.execute("UPDATE meta SET value=? WHERE key=?", (str(first), AUDIT_MARKER))
            self._append_audit(db, AuditEntry(now, KEYED_ACTOR, KEYED_ACTION, keyed_object(first)))
            return first

        return await self._write(q)

    async def append_audit(self, entry: AuditEntry) -> None:
        # Only a deferred row: no savepoint needed (see _Step).
        await self._write(lambda db: True, entry, savepoint=False)

    async def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        def q(db: sqlite3.Connection) -> None:
            for entry in entries:
                self._append_audit(db, entry)

        await self._write(q, savepoint=False)

    async def audit_after(self, seq: int, limit: int) -> list[AuditRecord]:
        def q() -> list[AuditRecord]:
            rows = self._db.execute(
                "SELECT seq, at, actor, action, object, outcome, prev_hash, hash FROM audit"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            return [AuditRecord(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bytes(r[7])) for r in rows]

        return await self._run(q)

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
        """Never wakes: one process owns an embedded store, and publishes its own events as it commits them."""
        connected(True)
        await asyncio.Event().wait()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Already exclusive: the data dir lock keeps every other server off this store."""
        yield

    async def snapshot_to(self, target: Path) -> None:
        """A consistent copy of the live database (SQLite's online backup API), 0600."""

        def q() -> None:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
            out = sqlite3.connect(target)
            try:
                self._db.backup(out)
            finally:
                out.close()

        await self._run(q)
