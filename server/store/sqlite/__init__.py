"""The embedded store: the one SQL store over SQLite (WAL mode, one store thread, group commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from server.store.records import Audit
from server.store.sql import SqlStore
from server.store.sqlite.backend import SqliteBackend

__all__ = ["SqliteStore"]

T = TypeVar("T")


class SqliteStore(SqlStore):
    _backend: SqliteBackend

    @classmethod
    async def open(cls, path: Path, *, workers: int = 1) -> SqliteStore:
        """Opens (creating 0600 if absent) and migrates the store. Raises StoreError.

        workers: how many processes of this server share it (commit.py paces by it)."""
        return cls(await SqliteBackend.open(path, workers=workers))

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], audit: Audit = None, *, savepoint: bool = True
    ) -> T:
        """fn on the raw connection, as one write of a batch (tests and tools)."""

        async def body(tx: object) -> T:
            return fn(self._backend.tx.raw)

        return await self._change(body, audit, savepoint=savepoint)

    # The group commit's pacing state (tests set it to simulate load).
    @property
    def _last_batch(self) -> int:
        return self._backend.commits.last_batch

    @_last_batch.setter
    def _last_batch(self, value: int) -> None:
        self._backend.commits.last_batch = value

    @property
    def _last_commit(self) -> float:
        return self._backend.commits.last_commit

    @_last_commit.setter
    def _last_commit(self, value: float) -> None:
        self._backend.commits.last_commit = value
