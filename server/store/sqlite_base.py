"""The SQLite store's plumbing: one worker thread that owns the connection, and transactions."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kms.audit import GENESIS, AuditRecord, record_hash
from server.store.base import Audit, AuditEntry, RevocationEvent, StoreError

__all__ = ["SqliteBase"]

T = TypeVar("T")


class SqliteBase:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None

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
        await self._run(self._tx, lambda db: True, entry)

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
