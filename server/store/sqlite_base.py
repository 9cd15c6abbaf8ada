"""The SQLite store's plumbing: one worker thread that owns the connection, and transactions.

Writes are group-committed: every write queued while the previous commit was
syncing joins one transaction, each in its own savepoint (a failing write
rolls back alone), and all of them are acknowledged only after that one
COMMIT is durable. Under load this turns one fsync per write into one per
batch; alone, a write commits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kms.audit import GENESIS, AuditRecord, record_hash
from server.store.base import Audit, AuditEntry, RevocationEvent, StoreError

__all__ = ["SqliteBase"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    audit: Audit
    future: asyncio.Future[Any]


def _settle(batch: list[_Write], outcomes: list[tuple[Any, BaseException | None]]) -> None:
    for write, (result, error) in zip(batch, outcomes, strict=True):
        if write.future.cancelled():  # the caller went away; the write stands (or not) all the same
            continue
        if error is None:
            write.future.set_result(result)
        else:
            write.future.set_exception(error)


class SqliteBase:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._queued: list[_Write] = []
        self._queued_lock = threading.Lock()

    async def close(self) -> None:
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

    async def _write(self, fn: Callable[[sqlite3.Connection], T], audit: Audit = None) -> T:
        """Runs fn in a transaction (shared with other queued writes); returns once it is durable.

        As with _tx, a result of None appends no audit record.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queued_lock:
            self._queued.append(_Write(fn, audit, future))
            first = len(self._queued) == 1
        if first:
            self._executor.submit(self._commit_queued, loop)
        return await future

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the worker thread: everything queued so far, in one transaction."""
        with self._queued_lock:
            batch, self._queued = self._queued, []
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            for write in batch:
                db.execute("SAVEPOINT write")
                try:
                    result = write.fn(db)
                    if write.audit is not None and result is not None:
                        self._append_audit(db, write.audit(result) if callable(write.audit) else write.audit)
                except Exception as exc:
                    db.execute("ROLLBACK TO write")
                    outcomes.append((None, exc))
                else:
                    outcomes.append((result, None))
                db.execute("RELEASE write")
            db.execute("COMMIT")
        except BaseException as exc:  # nothing of the batch is durable: every write fails
            # A broken connection may refuse even this; the error below is what callers need.
            with contextlib.suppress(sqlite3.Error):
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            outcomes = [(None, exc)] * len(batch)
        with contextlib.suppress(RuntimeError):  # the loop closed while we committed (shutdown)
            loop.call_soon_threadsafe(_settle, batch, outcomes)

    def _tx(self, fn: Callable[[sqlite3.Connection], T], audit: Audit = None) -> T:
        """Runs fn in one BEGIN IMMEDIATE transaction (on the worker thread).

        The audit entry, if any, is appended in the same transaction, so an
        action is recorded exactly when it happens. A result of None means
        nothing happened (an idempotent repeat, a refused token), and appends nothing.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            if audit is not None and result is not None:
                self._append_audit(db, audit(result) if callable(audit) else audit)
            db.execute("COMMIT")
            return result
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _append_event(
        db: sqlite3.Connection,
        kind: str,
        reason: str,
        now: int,
        *,
        serial: str | None = None,
        agent: str | None = None,
        key: tuple[str, int] | None = None,
    ) -> RevocationEvent:
        key_name, key_version = key if key else (None, None)
        cur = db.execute(
            "INSERT INTO events(kind, serial, agent_name, key_name, key_version, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, serial, agent, key_name, key_version, reason, now),
        )
        assert cur.lastrowid is not None
        return RevocationEvent(cur.lastrowid, kind, serial, agent, key_name, key_version, reason, now)

    @staticmethod
    def _append_audit(db: sqlite3.Connection, entry: AuditEntry) -> None:
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, bytes(last[1])) if last else (1, GENESIS)
        digest = record_hash(prev, seq, entry.at, entry.actor, entry.action, entry.object, entry.outcome)
        db.execute(
            "INSERT INTO audit(seq, at, actor, action, object, outcome, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, entry.at, entry.actor, entry.action, entry.object, entry.outcome, prev, digest),
        )

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._write(lambda db: True, entry)

    async def audit_after(self, seq: int, limit: int) -> list[AuditRecord]:
        def q() -> list[AuditRecord]:
            rows = self._db.execute(
                "SELECT seq, at, actor, action, object, outcome, prev_hash, hash FROM audit"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            return [AuditRecord(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bytes(r[7])) for r in rows]

        return await self._run(q)

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
