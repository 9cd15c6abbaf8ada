"""The shared store: the one SQL store over PostgreSQL, for several kms-server replicas of one deployment.

Chosen with ``--database postgresql://...``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from server.store.postgres.backend import PgBackend
from server.store.postgres.connect import (
    Conn,
    create_pool,
    is_postgres_url,
    migrate,
    pool_share,
    read_password_file,
)
from server.store.records import Audit
from server.store.sql import SqlStore

__all__ = ["PostgresStore", "is_postgres_url", "read_password_file"]

T = TypeVar("T")


class PostgresStore(SqlStore):
    _backend: PgBackend

    @classmethod
    async def open(cls, url: str, *, password_file: Path | None = None, workers: int = 1) -> PostgresStore:
        """Connects (waiting up to CONNECT_PATIENCE for the database) and migrates. Raises StoreError.

        The password comes from the URL, else password_file, else (as libpq does)
        PGPASSWORD or the PGPASSFILE (~/.pgpass) entry for the host, which asyncpg reads.
        workers: how many worker processes of this replica each open a store (pool_share).
        """
        store = cls(PgBackend(url, await create_pool(url, password_file, pool_share(workers))))
        try:
            async with store._backend.conn() as conn:
                await migrate(conn, url)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def _pool(self) -> Any:
        return self._backend.pool

    async def _write(self, fn: Callable[[Conn], Awaitable[T]], audit: Audit = None) -> T:
        """fn on the raw connection, in one transaction with its audit records (tests and tools)."""

        async def body(tx: Any) -> T:
            return await fn(tx.raw)

        return await self._change(body, audit)
