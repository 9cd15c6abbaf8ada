"""Reaching PostgreSQL: the pool, its session settings, the password file, migrations.

Connections are pooled (asyncpg); a replica opens at most about ``POOL_SIZE``
in all, shared among its worker processes (``pool_share``), plus one listening
connection per worker. Migrations are the same numbered steps as
SQLite's, applied by whichever replica gets the migration lock first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg

from kms.errors import InvalidArgument
from server.database_url import redact_url
from server.store.migrations import POSTGRES_MIGRATIONS, SCHEMA_VERSION
from server.store.records import StoreError

__all__ = [
    "CERT_LOCKS",
    "CONNECTION_ERRORS",
    "KEY_LOCKS",
    "SESSION_SETTINGS",
    "Conn",
    "create_pool",
    "pool_share",
    "is_postgres_url",
    "migrate",
    "read_password_file",
]

logger = logging.getLogger(__name__)

# asyncpg ships no type information: its connection is Any to the type checker.
Conn: TypeAlias = Any

# pg_advisory_xact_lock keys (any constants unique to this schema).
AUDIT_LOCK = 0x6B6D_7301
MIGRATE_LOCK = 0x6B6D_7302
INIT_LOCK = 0x6B6D_7303
# pg_advisory_xact_lock(int4, int4) key space of per-certificate locks (with hashtext(serial)).
CERT_LOCKS = 0x6B6D_7304
# The same, per key (with hashtext(name)): releases share it, disabling and enabling take it alone.
KEY_LOCKS = 0x6B6D_7305

# A replica's pooled connections, shared among its workers: PostgreSQL's max_connections (100 by
# default) is a budget for the whole fleet, and a 16-core host running a pool of this size per
# worker would take 176 connections alone.
POOL_SIZE = 10
# A worker's pool is never smaller: a long write does not hold up every read of the worker.
WORKER_POOL_MIN = 2
# How long a starting server waits for its database before giving up.
CONNECT_PATIENCE = 30.0

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


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """No reset query on release: one round trip fewer per call.

    Safe because nothing here leaves session state on a pooled connection: no
    SET, LISTEN (the listener has a connection of its own) or cursor, and the
    one session-level advisory lock (exclusive) is unlocked before release.
    asyncpg still rolls back any open transaction.
    """

    def get_reset_query(self) -> str:
        return ""


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _unusable(url: str) -> InvalidArgument:
    # Not the URL parser's own words: they can quote part of the password
    # (asyncpg splits the user info at the first '@', redact_url at the last).
    return InvalidArgument(
        f"--database {redact_url(url)!r} is not a usable URL: check its form, and percent-encode"
        " characters such as '@', ':' or '/' in the user name and password"
    )


def read_password_file(path: Path) -> str:
    """The database password from its file (--database-password-file): its first line.

    Refused unless only its owner can read it, as the master key is (libpq
    ignores such a ~/.pgpass; refusing says why instead).

    Raises:
        StoreError: the file cannot be read, is readable by others, or is empty.
    """
    what = f"--database-password-file {path}"
    try:
        with path.open("rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            data = f.read(4096)
    except OSError as exc:
        raise StoreError(f"cannot read {what}: {exc.strerror}") from None
    if mode & 0o077:
        raise StoreError(f"{what} is readable by others (mode {mode:04o}): chmod 600 it")
    try:
        password = data.decode().splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError:
        raise StoreError(f"{what} is not UTF-8 text") from None
    if not password:
        raise StoreError(f"{what} is empty: write the password on its first line")
    return password


def pool_share(workers: int) -> int:
    """The pool size of one of a replica's workers (--workers): about POOL_SIZE in all."""
    return max(WORKER_POOL_MIN, -(-POOL_SIZE // workers))


async def create_pool(url: str, password_file: Path | None, size: int = POOL_SIZE) -> Any:
    """The pool, once the database answers (waiting up to CONNECT_PATIENCE). Raises StoreError.

    The password comes from the URL, else password_file, else (as libpq does)
    PGPASSWORD or the PGPASSFILE (~/.pgpass) entry for the host, which asyncpg reads.
    """
    if not is_postgres_url(url):
        raise InvalidArgument(f"--database {redact_url(url)!r} is not a postgresql:// URL")
    password = read_password_file(password_file) if password_file is not None else None
    # min_size 0: connections open on demand, so a pool that lost them all
    # (database restart) reconnects on the next call rather than in a
    # background loop of its own.
    try:
        pool = await asyncpg.create_pool(
            url,
            password=password,
            min_size=0,
            max_size=size,
            timeout=10,
            command_timeout=COMMAND_TIMEOUT,
            server_settings=SESSION_SETTINGS,
            connection_class=_PooledConnection,
            # With several hosts in the URL: the writable one, never a standby that lags.
            target_session_attrs="read-write",
        )
    except (ValueError, asyncpg.exceptions.ClientConfigurationError):
        raise _unusable(url) from None
    try:
        await _first_connect(pool, url)
    except BaseException:
        pool.terminate()
        raise
    return pool


async def _first_connect(pool: Any, url: str) -> None:
    deadline = time.monotonic() + CONNECT_PATIENCE
    backoff = 0.2
    while True:
        try:
            async with pool.acquire(timeout=10) as conn:
                await conn.fetchval("SELECT 1")
            return
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as exc:
            raise StoreError(f"cannot use database {redact_url(url)}: {exc}") from None
        except (asyncpg.exceptions.ClientConfigurationError, ValueError):  # parsed on first use
            raise _unusable(url) from None
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"cannot reach database {redact_url(url)} ({exc}): check --database and that PostgreSQL runs"
                ) from None
            logger.warning("database not reachable yet: retrying", extra={"error": type(exc).__name__})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


async def migrate(conn: Conn, url: str) -> None:
    """Brings the schema to SCHEMA_VERSION, in one transaction."""
    async with conn.transaction():
        # One replica migrates; the others wait here, then find nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        tables = {
            r[0]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        }
        if tables and "schema_version" not in tables:
            raise StoreError(f"database {redact_url(url)} has tables but is not a Seed KMS store")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT)"
        )
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"database {redact_url(url)} has schema version {current}, newer than this kms-server "
                f"knows ({SCHEMA_VERSION}): upgrade kms-server"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in POSTGRES_MIGRATIONS[version - 1]:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version VALUES ($1, EXTRACT(EPOCH FROM now())::bigint)", version
            )
