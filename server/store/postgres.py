"""The shared store: PostgreSQL, for several kms-server replicas of one deployment.

Chosen with ``--database postgresql://...``. Connections are pooled
(asyncpg); each replica opens at most ``POOL_SIZE`` plus one listening
connection. Migrations are the same numbered steps as SQLite's, applied by
whichever replica gets the migration lock first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from pathlib import Path

import asyncpg

from kms.errors import InvalidArgument
from server.config import redact_url
from server.store import rules
from server.store.base import (
    AgentRecord,
    Audit,
    CertificateRecord,
    Enrollment,
    JoinTokenRecord,
    RevocationEvent,
    StoreError,
)
from server.store.migrations import POSTGRES_MIGRATIONS, SCHEMA_VERSION
from server.store.postgres_base import (
    COMMAND_TIMEOUT,
    CONNECTION_ERRORS,
    MIGRATE_LOCK,
    SESSION_SETTINGS,
    Conn,
)
from server.store.postgres_events import PostgresEvents, append_event, lock_certificates, revoked_certificates
from server.store.postgres_keys import PostgresKeys
from server.store.rows import AGENT_COLUMNS, TOKEN_COLUMNS, agent_record, token_record

__all__ = ["PostgresStore", "is_postgres_url", "read_password_file"]

logger = logging.getLogger(__name__)

POOL_SIZE = 10
# How long a starting server waits for its database before giving up.
CONNECT_PATIENCE = 30.0

# Each agent with its newest certificate.
_AGENTS_WITH_LATEST = (
    f"SELECT {AGENT_COLUMNS} FROM agents a JOIN certificates c"  # noqa: S608 - constant columns
    " ON c.serial = (SELECT serial FROM certificates WHERE agent_name = a.name"
    " ORDER BY issued_at DESC, inserted DESC LIMIT 1)"
)


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


_VALID_SERIALS = "SELECT serial FROM certificates WHERE agent_name=$1 AND revoked_at IS NULL AND not_after>$2 ORDER BY serial"


async def _valid_serials(conn: Conn, name: str, now: int) -> list[str]:
    """The name's certificates that still authenticate at now (unrevoked, unexpired), locked for update."""
    rows = await conn.fetch(
        _VALID_SERIALS + " FOR UPDATE",
        name,
        now,
    )
    return [r[0] for r in rows]


async def _insert_certificate(
    conn: Conn,
    cert: CertificateRecord,
    token_id: str | None,
    groups_json: str,
    renewed_from: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO certificates(serial, agent_name, not_before, not_after, der, issued_at, token_id, groups_json,"
        " renewed_from) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        cert.serial,
        cert.agent_name,
        cert.not_before,
        cert.not_after,
        cert.der,
        cert.issued_at,
        token_id,
        groups_json,
        renewed_from,
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


class PostgresStore(PostgresKeys, PostgresEvents):
    @classmethod
    async def open(cls, url: str, *, password_file: Path | None = None) -> PostgresStore:
        """Connects (waiting up to CONNECT_PATIENCE for the database) and migrates. Raises StoreError.

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
                max_size=POOL_SIZE,
                timeout=10,
                command_timeout=COMMAND_TIMEOUT,
                server_settings=SESSION_SETTINGS,
                connection_class=_PooledConnection,
                # With several hosts in the URL: the writable one, never a standby that lags.
                target_session_attrs="read-write",
            )
        except (ValueError, asyncpg.exceptions.ClientConfigurationError):
            raise _unusable(url) from None
        store = cls(url, pool)
        try:
            await store._first_connect()
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def _first_connect(self) -> None:
        """Waits up to CONNECT_PATIENCE for the database (it may be starting with us)."""
        deadline = time.monotonic() + CONNECT_PATIENCE
        backoff = 0.2
        while True:
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    await conn.fetchval("SELECT 1")
                return
            except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as exc:
                raise StoreError(f"cannot use database {redact_url(self._url)}: {exc}") from None
            except (asyncpg.exceptions.ClientConfigurationError, ValueError):  # parsed on first use
                raise _unusable(self._url) from None
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"cannot reach database {redact_url(self._url)} ({exc}): check --database and that "
                        "PostgreSQL runs"
                    ) from None
                logger.warning("database not reachable yet: retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _migrate(self) -> None:
        async with self._conn() as conn, conn.transaction():
            # One replica migrates; the others wait here, then find nothing to do.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            tables = {
                r[0]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            }
            if tables and "schema_version" not in tables:
                raise StoreError(f"database {redact_url(self._url)} has tables but is not a Seed KMS store")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT)"
            )
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"database {redact_url(self._url)} has schema version {current}, newer than this kms-server "
                    f"knows ({SCHEMA_VERSION}): upgrade kms-server"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in POSTGRES_MIGRATIONS[version - 1]:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version VALUES ($1, EXTRACT(EPOCH FROM now())::bigint)", version
                )

    async def schema_version(self) -> int:
        async def q(conn: Conn) -> int:
            return int(await conn.fetchval("SELECT MAX(version) FROM schema_version"))

        return await self._read(q)

    # --- meta ------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async def q(conn: Conn) -> str | None:
            value = await conn.fetchval("SELECT value FROM meta WHERE key=$1", key)
            return None if value is None else str(value)

        return await self._read(q)

    async def set_meta(self, key: str, value: str, *, replace: bool) -> str:
        async def q(conn: Conn) -> str:
            await conn.execute(
                "INSERT INTO meta(key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = CASE WHEN $3 THEN EXCLUDED.value ELSE meta.value END",
                key,
                value,
                replace,
            )
            return str(await conn.fetchval("SELECT value FROM meta WHERE key=$1", key))

        return await self._write(q)

    async def create_ca(self, key: str, cert: str) -> tuple[str, str]:
        async def q(conn: Conn) -> tuple[str, str]:
            # A replica racing us waits on our uncommitted certificate row, then inserts
            # nothing and reads what we committed (each statement sees the latest commit).
            if await conn.fetchval(
                "INSERT INTO meta(key, value) VALUES ('ca_cert', $1) ON CONFLICT (key) DO NOTHING RETURNING value",
                cert,
            ):
                await conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('ca_key', $1)"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    key,
                )
            rows = await conn.fetch("SELECT key, value FROM meta WHERE key IN ('ca_key', 'ca_cert')")
            stored = {r["key"]: str(r["value"]) for r in rows}
            return stored.get("ca_key", ""), stored["ca_cert"]

        return await self._write(q)

    async def next_crl(self) -> tuple[int, list[CertificateRecord]]:
        async def q(conn: Conn) -> tuple[int, list[CertificateRecord]]:
            # The number's row stays locked until COMMIT, and the list is read after
            # it: the holder of the next number reads a list at least as new.
            number = await conn.fetchval(
                "INSERT INTO meta(key, value) VALUES ('crl_number', '1')"
                " ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + 1)::text RETURNING value"
            )
            return int(number), await revoked_certificates(conn)

        return await self._write(q)

    async def is_empty(self) -> bool:
        async def q(conn: Conn) -> bool:
            for table in ("join_tokens", "certificates", "keys"):
                if await conn.fetchval(f"SELECT 1 FROM {table} LIMIT 1"):  # noqa: S608 - constant names
                    return False
            return True

        return await self._read(q)

    # --- join tokens -----------------------------------------------------------

    async def add_join_token(
        self,
        token: JoinTokenRecord,
        *,
        allow_reenroll: bool = False,
        replace: bool = False,
        audit: Audit = None,
    ) -> None:
        async def q(conn: Conn) -> bool:
            revoked = await conn.fetchrow("SELECT revoked_at FROM agents WHERE name=$1", token.name)
            if revoked and revoked[0] is not None and not allow_reenroll:
                raise rules.name_revoked(token.name)
            if not replace and await _valid_serials(conn, token.name, token.created_at):
                raise rules.name_in_use(token.name)
            await conn.execute(
                "INSERT INTO join_tokens(token_id, secret_hash, name, groups_json, created_at, expires_at,"
                " allow_reenroll, replace_existing) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                token.token_id,
                token.secret_hash,
                token.name,
                json.dumps(list(token.groups)),
                token.created_at,
                token.expires_at,
                int(allow_reenroll),
                int(replace),
            )
            return True

        await self._write(q, audit)

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None:
        async def q(conn: Conn) -> JoinTokenRecord | None:
            row = await conn.fetchrow(
                f"SELECT {TOKEN_COLUMNS} FROM join_tokens WHERE token_id=$1",  # noqa: S608 - constant columns
                token_id,
            )
            return None if row is None else token_record(row)

        return await self._read(q)

    # --- enrollment --------------------------------------------------------------

    async def enroll(
        self, token_id: str, secret_hash: bytes, now: int, cert: CertificateRecord, *, audit: Audit = None
    ) -> Enrollment | None:
        async def q(conn: Conn) -> Enrollment | None:
            # The conditional UPDATE is the single-use guarantee: a second enrollment
            # (on any replica) waits for the first's row lock, then finds used_at set.
            token = await conn.fetchrow(
                "UPDATE join_tokens SET used_at=$1, used_by_serial=$2"
                " WHERE token_id=$3 AND secret_hash=$4 AND used_at IS NULL AND expires_at>$1 AND name=$5"
                " RETURNING groups_json, allow_reenroll, replace_existing",
                now,
                cert.serial,
                token_id,
                secret_hash,
                cert.agent_name,
            )
            if token is None:
                return None
            groups_json, allow, replace = token
            name = cert.agent_name
            # FOR UPDATE: renewals (FOR SHARE) and revocations of this name wait for us, or we for them.
            revoked = await conn.fetchrow("SELECT revoked_at FROM agents WHERE name=$1 FOR UPDATE", name)
            if revoked and revoked[0] is not None and not allow:
                raise rules.reenroll_refused(name)  # rolls back: the token stays unused
            # The upsert locks the name's row (a racing first enrollment of the name waits
            # here for the other to commit), so the check below sees every certificate
            # committed before it; a raise below rolls the upsert back too.
            created = await conn.fetchval(
                "INSERT INTO agents(name, created_at, updated_at) VALUES ($1, $2, $2)"
                " ON CONFLICT (name) DO UPDATE SET updated_at=EXCLUDED.updated_at, revoked_at=NULL"
                " RETURNING created_at",
                name,
                now,
            )
            # Checked again here: the token may predate the certificate (two tokens for one name).
            valid = await _valid_serials(conn, name, now)
            # As every revocation does, the certificates' advisory locks come after their rows
            # (the same order, so no deadlock with one): a key release by a certificate this
            # enrollment supersedes commits before it, or reads it revoked and is refused.
            await lock_certificates(conn, valid)
            if valid and not replace:
                raise rules.name_in_use(name, at_enroll=True)
            superseded: list[RevocationEvent] = []
            for serial in valid:
                await conn.execute(
                    "UPDATE certificates SET revoked_at=$1, revocation_reason='superseded' WHERE serial=$2",
                    now,
                    serial,
                )
                superseded.append(
                    await append_event(conn, "cert", "superseded", now, serial=serial, agent=name)
                )
            await _insert_certificate(conn, cert, token_id, groups_json)
            return Enrollment(
                AgentRecord(name, tuple(json.loads(groups_json)), created, cert), tuple(superseded)
            )

        return await self._write(q, audit)

    async def add_certificate(
        self,
        cert: CertificateRecord,
        groups: tuple[str, ...],
        *,
        renewed_from: str,
        not_renewed_since: int | None = None,
        audit: Audit = None,
    ) -> None:
        async def q(conn: Conn) -> bool:
            # The agent's row FOR NO KEY UPDATE: renewals of one agent (on any replica) take
            # turns, so the second sees the first's certificate below. A revocation on any
            # replica either committed before (and is seen here) or waits for this renewal
            # (and then revokes its certificate too): FOR SHARE on the certificate renewed from.
            agent = await conn.fetchval(
                "SELECT revoked_at IS NULL FROM agents WHERE name=$1 FOR NO KEY UPDATE", cert.agent_name
            )
            old = await conn.fetchval(
                "SELECT revoked_at IS NULL FROM certificates WHERE serial=$1 FOR SHARE", renewed_from
            )
            if not agent or not old:
                raise rules.renewal_refused(cert.agent_name, renewed_from)
            if not_renewed_since is not None:
                last = await conn.fetchval(
                    "SELECT MAX(issued_at) FROM certificates WHERE agent_name=$1 AND renewed_from IS NOT NULL",
                    cert.agent_name,
                )
                if last is not None and last > not_renewed_since:
                    raise rules.renewed_too_soon(cert.agent_name, last, not_renewed_since, cert.issued_at)
            await _insert_certificate(conn, cert, None, json.dumps(list(groups)), renewed_from)
            await conn.execute(
                "UPDATE agents SET updated_at=$1 WHERE name=$2", cert.issued_at, cert.agent_name
            )
            return True

        await self._write(q, audit)

    # --- agents ------------------------------------------------------------------

    async def get_agent_by_serial(self, serial: str) -> AgentRecord | None:
        async def q(conn: Conn) -> AgentRecord | None:
            row = await conn.fetchrow(
                f"SELECT {AGENT_COLUMNS} FROM certificates c"  # noqa: S608 - constant columns
                " JOIN agents a ON a.name = c.agent_name WHERE c.serial=$1",
                serial,
            )
            return None if row is None else agent_record(row)

        return await self._read(q)

    async def get_agent(self, name: str) -> AgentRecord | None:
        async def q(conn: Conn) -> AgentRecord | None:
            row = await conn.fetchrow(f"{_AGENTS_WITH_LATEST} WHERE a.name=$1", name)
            return None if row is None else agent_record(row)

        return await self._read(q)

    async def list_agents(self) -> list[AgentRecord]:
        async def q(conn: Conn) -> list[AgentRecord]:
            return [agent_record(r) for r in await conn.fetch(f"{_AGENTS_WITH_LATEST} ORDER BY a.name")]

        return await self._read(q)

    async def is_known_agent(self, name: str, now: int) -> bool:
        async def q(conn: Conn) -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM agents WHERE name=$1) OR EXISTS (SELECT 1 FROM join_tokens"
                    " WHERE name=$1 AND used_at IS NULL AND expires_at>$2)",
                    name,
                    now,
                )
            )

        return await self._read(q)
