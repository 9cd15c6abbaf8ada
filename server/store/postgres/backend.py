"""The PostgreSQL backend: pooled connections, one READ COMMITTED transaction per write.

A lost connection surfaces as Unavailable (the caller may retry); asyncpg's
pool replaces broken connections on the next acquire, so the server recovers
by itself when the database comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from kms.errors import FailedPrecondition, Unavailable
from server.store import rules
from server.store.dialect import Body
from server.store.ordered import InOrder
from server.store.postgres import notify
from server.store.postgres.connect import CONNECTION_ERRORS, INIT_LOCK, Conn
from server.store.postgres.tx import PgTx
from server.store.records import AuditSink

__all__ = ["PgBackend"]

T = TypeVar("T")

# How long a starting replica waits for another one to finish creating the deployment.
INIT_PATIENCE = 120.0


def _unavailable(exc: BaseException, *, committing: bool = False) -> Unavailable:
    error = rules.store_down(type(exc).__name__, committing=committing)
    error.__cause__ = exc
    return error


class PgBackend:
    def __init__(self, url: str, pool: Any) -> None:
        self._url = url
        self.pool = pool
        self._copies: InOrder | None = None  # where committed audit records are copied, in seq order

    async def close(self) -> None:
        if self._copies is not None:
            self._copies.close()
        with contextlib.suppress(*CONNECTION_ERRORS):
            await asyncio.wait_for(self.pool.close(), 10)
        self.pool.terminate()

    @contextlib.asynccontextmanager
    async def conn(self) -> AsyncIterator[Conn]:
        try:
            async with self.pool.acquire(timeout=10) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def read(self, body: Body[T]) -> T:
        """Runs a read; once more on a fresh connection if the first one had died (reads repeat safely)."""
        try:
            async with self.conn() as conn:
                return await body(PgTx(conn, None))
        except Unavailable:
            async with self.conn() as conn:
                return await body(PgTx(conn, None))

    async def write(self, body: Body[T], *, savepoint: bool = True, invalidates: bool = False) -> T:
        """Runs body in one transaction; returns once COMMIT is durable (and its audit records copied).

        Retried once on a fresh connection only if the first could not even
        BEGIN (a pooled connection that died while idle); once the write has
        started it is not: if the connection dies during COMMIT the outcome is
        unknown, and the caller is told so (WriteOutcomeUnknown, an Unavailable).
        """
        tx: PgTx | None = None
        try:
            for attempt in (1, 2):
                async with self.conn() as conn:
                    transaction = conn.transaction()
                    try:
                        await transaction.start()
                    except CONNECTION_ERRORS:
                        if attempt == 2:
                            raise
                        continue
                    tx = PgTx(conn, self._copies)
                    result = await self._commit(transaction, conn, body, tx)
                    break
            else:
                raise AssertionError("unreachable")
            # Committed: copied out before the caller is answered (server/audit/devices.py),
            # with the connection back in the pool.
            while tx.appended_records:
                ticket, records = tx.appended_records.pop(0)
                if ticket is not None and self._copies is not None:
                    await self._copies.deliver(ticket, records)
            return result
        finally:
            # Not committed (or its outcome unknown): their turn passes, uncopied.
            for ticket, _ in tx.appended_records if tx else ():
                if ticket is not None and self._copies is not None:
                    self._copies.abandon(ticket)

    @staticmethod
    async def _commit(transaction: Any, conn: Conn, body: Body[T], tx: PgTx) -> T:
        try:
            result = await body(tx)
        except BaseException:
            try:
                await transaction.rollback()
            except Exception:
                # Broken mid-write (or cancelled mid-query): never reuse it. The
                # original error is the one the caller needs.
                conn.terminate()
            raise
        try:
            await transaction.commit()
        except CONNECTION_ERRORS as exc:
            if isinstance(exc, asyncpg.PostgresError) and not isinstance(
                exc, asyncpg.PostgresConnectionError | asyncpg.exceptions.OperatorInterventionError
            ):
                raise  # the database answered the COMMIT with a refusal: nothing happened
            raise _unavailable(exc, committing=True) from exc
        return result

    async def erase(self) -> bool:
        # The old row version (sealed material) stays in the table's pages until
        # VACUUM frees them; ask for that now rather than at autovacuum's leisure.
        with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
            async with self.pool.acquire(timeout=10) as conn:
                await conn.execute("VACUUM key_versions")
        return True

    async def snapshot_to(self, target: Path) -> None:
        raise FailedPrecondition(
            "kms-server backup copies the embedded SQLite store only: back up a PostgreSQL store with "
            "pg_dump (or your database's own backups), and keep the master key apart from it"
        )

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Held by one replica at a time across the deployment (first start: exactly one CA)."""
        async with self.conn() as conn:
            # Polled, not waited on: the holder may be making an RSA-4096 CA, which can
            # outlast lock_timeout; a starting replica should wait that out, not fail.
            deadline = asyncio.get_running_loop().time() + INIT_PATIENCE
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", INIT_LOCK):
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(
                        f"another kms-server has held the first-start lock for over {INIT_PATIENCE:.0f} s: "
                        "retry, or look for a stuck replica"
                    )
                await asyncio.sleep(0.2)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", INIT_LOCK)

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
        await notify.follow_events(self._url, wake, connected)

    def copy_audit_to(self, sink: AuditSink | None) -> None:
        if sink is not None:
            self._copies = InOrder(sink)
