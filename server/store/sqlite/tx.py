"""The dialect's Tx over SQLite: plain calls, on the store's thread or the event loop's.

No row or advisory locks: one batch at a time runs its writes, in BEGIN IMMEDIATE,
on one thread at a time (sqlite/commit.py says which). Its methods never suspend,
so a transaction body runs to its end in one call (dialect.run_now), with no awaiting.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable, Sequence
from typing import Any

from kms.audit import AuditRecord
from server.store.sqlite.buffer import DeferredInserts
from server.store.sqlite.cache import ReadCache

__all__ = ["SqliteTx"]


class SqliteTx:
    """The one Tx of a SQLite store, reused by every transaction (they run one at a time)."""

    insert_order = "rowid"

    def __init__(self, db: sqlite3.Connection) -> None:
        self.raw = db
        self.cache = ReadCache()
        self.later = DeferredInserts()
        self.chain_head: tuple[int, bytes] | None = None  # inside a transaction only

    def locked(self, sql: str, clause: str) -> str:
        return sql

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return self.raw.execute(sql, args).fetchone()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return self.raw.execute(sql, args).fetchall()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self.raw.execute(sql, args).fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> int:
        return self.raw.execute(sql, args).rowcount

    async def executemany(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.raw.executemany(sql, rows)

    async def insert_later(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self.later.add(sql, rows)

    async def insert_event(self, row: tuple[Any, ...]) -> int:
        cur = self.raw.execute(
            "INSERT INTO events(kind, serial, agent_name, key_name, key_version, reason, at, grantees)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def lock_certificates(self, serials: list[str], *, shared: bool = False) -> None:
        return None

    async def lock_key(self, name: str) -> None:
        return None

    async def lock_release(self, serial: str, key: str) -> None:
        return None

    async def lock_chain(self) -> None:
        return None

    def appended(self, records: list[AuditRecord]) -> None:
        return None  # copied from the deferred audit rows once committed

    def cached(self, key: Hashable) -> Any:
        return self.cache.get(key)

    def remember(self, key: Hashable, value: Any) -> None:
        self.cache.remember(key, value)
