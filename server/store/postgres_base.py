"""The PostgreSQL store's plumbing: the pool, transactions, the audit chain, errors.

Several kms-server replicas share one database, so what SQLite gets from its
single writer thread comes from PostgreSQL locks here:

- every write is one READ COMMITTED transaction; rows two replicas could race
  on are locked (``FOR UPDATE``) before they are read for a decision;
- the audit chain's head is read under a transaction-scoped advisory lock,
  taken as the last step before COMMIT, so the chain stays one chain (and
  this process's records commit in the order their seqs were drawn, which is
  the order they are copied to the audit devices in);
- event sequence numbers come from a counter row (see postgres_events);
- a key release and a revocation of its caller's certificate take turns on
  that certificate's advisory lock (see postgres_events.lock_certificates).

A lost connection surfaces as Unavailable (the caller may retry); asyncpg's
pool replaces broken connections on the next acquire, so the server recovers
by itself when the database comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import asyncpg

from kms.audit import GENESIS, KEYED_ACTION, KEYED_ACTOR, AuditRecord, extend, keyed_object
from kms.errors import FailedPrecondition, Unavailable
from server.store import rules
from server.store.base import AUDIT_MARKER, Audit, AuditEntry, AuditSink, audit_entries
from server.store.ordered import InOrder

__all__ = ["CERT_LOCKS", "CONNECTION_ERRORS", "Conn", "PostgresBase", "unavailable"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
# asyncpg ships no type information: its connection is Any to the type checker.
Conn: TypeAlias = Any

# pg_advisory_xact_lock keys (any constants unique to this schema).
AUDIT_LOCK = 0x6B6D_7301
MIGRATE_LOCK = 0x6B6D_7302
INIT_LOCK = 0x6B6D_7303
# pg_advisory_xact_lock(int4, int4) key space of per-certificate locks (with hashtext(serial)).
CERT_LOCKS = 0x6B6D_7304

# What a dead or restarting database looks like from here: worth a retry later.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
    # The client protocol is out of step, e.g. still consuming the error of a
    # connection the server just closed: this connection is done for.
    asyncpg.exceptions.InternalClientError,
    # A standby after a failover, or a revoked login: the operator's to fix, the caller's to retry.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    # Our own timeouts (see SESSION_SETTINGS): another session held a lock too long.
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
)

# Every pooled and listening session. A replica frozen or cut off mid-transaction
# holds the event counter or the audit lock, which every other replica waits on:
# the database ends such a session after idle_in_transaction_session_timeout, a
# waiter gives up after lock_timeout (the caller is told UNAVAILABLE), and TCP
# keepalives find a vanished client in about a minute instead of two hours.
SESSION_SETTINGS = {
    "idle_in_transaction_session_timeout": "15s",
    "lock_timeout": "10s",
    "statement_timeout": "30s",
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}
# The client's own bound on one statement (a database that stopped answering).
COMMAND_TIMEOUT = 30.0
# How long a starting replica waits for another one to finish creating the deployment.
INIT_PATIENCE = 120.0


def unavailable(exc: BaseException, *, committing: bool = False) -> Unavailable:
    """The store is out of reach; committing: it went while a change was committing."""
    error = rules.store_down(type(exc).__name__, committing=committing)
    error.__cause__ = exc
    return error


# The audit records the current task's transaction has appended (and their
# place in the order of delivery to the audit devices), between _write's BEGIN and COMMIT.
_appended: ContextVar[list[tuple[int | None, list[AuditRecord]]] | None] = ContextVar(
    "_appended", default=None
)


class PostgresBase:
    def __init__(self, url: str, pool: Any) -> None:
        self._url = url
        self._pool = pool
        # The chain key (None: unkeyed, format v1: stores opened by tests and tools)
        # and where committed records are copied; both set once, at start.
        self._audit_key: bytes | None = None
        self._audit_copies: InOrder | None = None

    async def close(self) -> None:
        if self._audit_copies is not None:
            self._audit_copies.close()
        with contextlib.suppress(*CONNECTION_ERRORS):
            await asyncio.wait_for(self._pool.close(), 10)
        self._pool.terminate()

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        try:
            async with self._pool.acquire(timeout=10) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            raise unavailable(exc) from exc

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Runs a read; once more on a fresh connection if the first one had died (reads repeat safely)."""
        try:
            async with self._conn() as conn:
                return await fn(conn)
        except Unavailable:
            async with self._conn() as conn:
                return await fn(conn)

    async def _write(self, fn: Callable[[Conn], Awaitable[T]], audit: Audit = None) -> T:
        """Runs fn in one transaction with its audit record; returns once COMMIT is durable.

        A result of None means nothing happened and appends no audit record.
        Retried once on a fresh connection only if the first could not even
        BEGIN (a pooled connection that died while idle); once the write has
        started it is not: if the connection dies during COMMIT the outcome is
        unknown, and the caller is told so (WriteOutcomeUnknown, an Unavailable).
        """
        appended: list[tuple[int | None, list[AuditRecord]]] = []
        outer = _appended.set(appended)
        try:
            for attempt in (1, 2):
                async with self._conn() as conn:
                    tx = conn.transaction()
                    try:
                        await tx.start()
                    except CONNECTION_ERRORS:
                        if attempt == 2:
                            raise
                        continue
                    try:
                        result = await fn(conn)
                        entries = audit_entries(audit, result)
                        if entries:
                            await self._append_audit(conn, entries)
                    except BaseException:
                        try:
                            await tx.rollback()
                        except Exception:
                            # Broken mid-write (or cancelled mid-query): never reuse it. The
                            # original error is the one the caller needs.
                            conn.terminate()
                        raise
                    try:
                        await tx.commit()
                    except CONNECTION_ERRORS as exc:
                        if isinstance(exc, asyncpg.PostgresError) and not isinstance(
                            exc,
                            asyncpg.PostgresConnectionError | asyncpg.exceptions.OperatorInterventionError,
                        ):
                            raise  # the database answered the COMMIT with a refusal: nothing happened
                        raise unavailable(exc, committing=True) from exc
                    break
            else:
                raise AssertionError("unreachable")
            # Committed: copied out before the caller is answered (server/audit/devices.py),
            # with the connection back in the pool.
            while appended:
                ticket, records = appended.pop(0)
                if ticket is not None and self._audit_copies is not None:
                    await self._audit_copies.deliver(ticket, records)
            return result
        finally:
            _appended.reset(outer)
            # Not committed (or its outcome unknown): their turn passes, uncopied.
            for ticket, _ in appended:
                if ticket is not None and self._audit_copies is not None:
                    self._audit_copies.abandon(ticket)

    async def _append_audit(self, conn: Conn, entries: Sequence[AuditEntry]) -> None:
        """Appends entries in order to the chain, under one lock and one read of its head."""
        # Held until COMMIT: the next writer reads the head this one wrote.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
        last = await conn.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        head_seq, head_hash = (int(last["seq"]), bytes(last["hash"])) if last else (0, GENESIS)
        records = extend(
            self._audit_key,
            head_seq,
            head_hash,
            [(e.at, e.actor, e.action, e.object, e.outcome) for e in entries],
        )
        # Drawn under the lock: this process's transactions hold tickets in seq order.
        appended = _appended.get()
        if appended is not None:
            appended.append((self._audit_copies.reserve() if self._audit_copies else None, records))
        await conn.executemany(
            "INSERT INTO audit(seq, at, actor, action, object, outcome, prev_hash, hash)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [tuple(vars(r).values()) for r in records],
        )

    async def open_audit_chain(self, key: bytes, now: int, sink: AuditSink | None = None) -> int | None:
        self._audit_key = key
        if sink is not None:
            self._audit_copies = InOrder(sink)

        async def q(conn: Conn) -> int | None:
            # Every replica may start at once: the first to take the chain's lock marks it.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
            value = await conn.fetchval("SELECT value FROM meta WHERE key=$1", AUDIT_MARKER)
            if value is None or (value != "pending" and not value.isdigit()):
                return None
            if value != "pending":
                return int(value)
            first = int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM audit")) + 1
            await conn.execute("UPDATE meta SET value=$1 WHERE key=$2", str(first), AUDIT_MARKER)
            await self._append_audit(conn, [AuditEntry(now, KEYED_ACTOR, KEYED_ACTION, keyed_object(first))])
            return first

        return await self._write(q)

    async def append_audit(self, entry: AuditEntry) -> None:
        async def q(conn: Conn) -> bool:
            return True

        await self._write(q, entry)

    async def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        async def q(conn: Conn) -> None:
            await self._append_audit(conn, entries)

        await self._write(q)

    async def audit_after(self, seq: int, limit: int) -> list[AuditRecord]:
        async def q(conn: Conn) -> list[AuditRecord]:
            rows = await conn.fetch(
                "SELECT seq, at, actor, action, object, outcome, prev_hash, hash FROM audit"
                " WHERE seq > $1 ORDER BY seq LIMIT $2",
                seq,
                limit,
            )
            return [AuditRecord(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bytes(r[7])) for r in rows]

        return await self._read(q)

    async def snapshot_to(self, target: Path) -> None:
        raise FailedPrecondition(
            "kms-server backup copies the embedded SQLite store only: back up a PostgreSQL store with "
            "pg_dump (or your database's own backups), and keep the master key apart from it"
        )

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Held by one replica at a time across the deployment (first start: exactly one CA)."""
        async with self._conn() as conn:
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

    @staticmethod
    def _rowcount(status: str) -> int:
        """The row count of a command tag such as 'UPDATE 1'."""
        return int(status.rsplit(" ", 1)[-1])
