"""The embedded store: SQLite in WAL mode, driven from one worker thread.

One thread owns the connection, so writes are serialised without locks and
the event loop never blocks on an fsync. ``synchronous=FULL`` makes every
committed transaction durable before the awaiting RPC answers.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import TypeVar

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
from server.store.migrations import SQLITE_MIGRATIONS
from server.store.rows import AGENT_COLUMNS, TOKEN_COLUMNS, agent_record, token_record
from server.store.sqlite_events import SqliteEvents, append_event, revoked_certificates
from server.store.sqlite_keys import SqliteKeys

__all__ = ["SqliteStore"]

T = TypeVar("T")


# Each agent with its newest certificate.
_AGENTS_WITH_LATEST = (
    f"SELECT {AGENT_COLUMNS} FROM agents a JOIN certificates c"  # noqa: S608 - constant columns
    " ON c.serial = (SELECT serial FROM certificates WHERE agent_name = a.name"
    " ORDER BY issued_at DESC, rowid DESC LIMIT 1)"
)


def _valid_serials(db: sqlite3.Connection, name: str, now: int) -> list[str]:
    """The name's certificates that still authenticate at now (unrevoked, unexpired)."""
    rows = db.execute(
        "SELECT serial FROM certificates WHERE agent_name=? AND revoked_at IS NULL AND not_after>? ORDER BY serial",
        (name, now),
    )
    return [r[0] for r in rows]


def _insert_certificate(
    db: sqlite3.Connection,
    cert: CertificateRecord,
    token_id: str | None,
    groups_json: str,
    renewed_from: str | None = None,
) -> None:
    db.execute(
        "INSERT INTO certificates(serial, agent_name, not_before, not_after, der, issued_at, token_id, groups_json,"
        " renewed_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            cert.serial,
            cert.agent_name,
            cert.not_before,
            cert.not_after,
            cert.der,
            cert.issued_at,
            token_id,
            groups_json,
            renewed_from,
        ),
    )


class SqliteStore(SqliteKeys, SqliteEvents):
    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Opens (creating 0600 if absent) and migrates the store. Raises StoreError."""
        store = cls(path)
        try:
            await store._run(store._open_sync)
        except BaseException:
            await store.close()
            raise
        return store

    # --- opening and migrations ----------------------------------------------

    def _open_sync(self) -> None:
        if not self._path.exists():
            os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        self._conn = conn
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            # Destroyed key material must not linger in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            self._migrate()
            # Finish any erasure a destroy could not complete (another reader held the WAL).
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise StoreError(f"store {self._path} failed its integrity check: restore it from a backup")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store {self._path} is corrupt or not a Seed KMS database ({exc})") from exc

    def _migrate(self) -> None:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "schema_version" not in tables:
            raise StoreError(f"{self._path} is an SQLite database but not a Seed KMS store")
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER)"
        )
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        if current > len(SQLITE_MIGRATIONS):
            raise StoreError(
                f"store {self._path} has schema version {current}, newer than this kms-server knows "
                f"({len(SQLITE_MIGRATIONS)}): upgrade kms-server"
            )
        for version in range(current + 1, len(SQLITE_MIGRATIONS) + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in SQLITE_MIGRATIONS[version - 1]:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, strftime('%s','now'))", (version,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        def q() -> int:
            return int(self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

        return await self._run(q)

    # --- meta ------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        def q() -> str | None:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(q)

    async def set_meta(self, key: str, value: str, *, replace: bool) -> str:
        def q() -> str:
            verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
            self._db.execute(f"{verb} INTO meta(key, value) VALUES (?, ?)", (key, value))
            return str(self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

        return await self._run(q)

    async def create_ca(self, key: str, cert: str) -> tuple[str, str]:
        def q(db: sqlite3.Connection) -> tuple[str, str]:
            if db.execute(
                "INSERT INTO meta(key, value) VALUES ('ca_cert', ?) ON CONFLICT(key) DO NOTHING RETURNING value",
                (cert,),
            ).fetchone():
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('ca_key', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key,),
                )
            stored = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('ca_key', 'ca_cert')"))
            return str(stored.get("ca_key", "")), str(stored["ca_cert"])

        return await self._write(q)

    async def next_crl(self) -> tuple[int, list[CertificateRecord]]:
        def q(db: sqlite3.Connection) -> tuple[int, list[CertificateRecord]]:
            row = db.execute(
                "INSERT INTO meta(key, value) VALUES ('crl_number', '1')"
                " ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value"
            ).fetchone()
            return int(row[0]), revoked_certificates(db)

        return await self._write(q)

    async def is_empty(self) -> bool:
        def q() -> bool:
            tables = ("join_tokens", "certificates", "keys")
            return not any(self._db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in tables)  # noqa: S608

        return await self._run(q)

    # --- join tokens -----------------------------------------------------------

    async def add_join_token(
        self,
        token: JoinTokenRecord,
        *,
        allow_reenroll: bool = False,
        replace: bool = False,
        audit: Audit = None,
    ) -> None:
        def q(db: sqlite3.Connection) -> bool:
            revoked = db.execute("SELECT revoked_at FROM agents WHERE name=?", (token.name,)).fetchone()
            if revoked and revoked[0] is not None and not allow_reenroll:
                raise rules.name_revoked(token.name)
            if not replace and _valid_serials(db, token.name, token.created_at):
                raise rules.name_in_use(token.name)
            db.execute(
                "INSERT INTO join_tokens(token_id, secret_hash, name, groups_json, created_at, expires_at,"
                " allow_reenroll, replace_existing) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.token_id,
                    token.secret_hash,
                    token.name,
                    json.dumps(list(token.groups)),
                    token.created_at,
                    token.expires_at,
                    int(allow_reenroll),
                    int(replace),
                ),
            )
            return True

        await self._write(q, audit)

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None:
        def q() -> JoinTokenRecord | None:
            row = self._db.execute(
                f"SELECT {TOKEN_COLUMNS} FROM join_tokens WHERE token_id=?",  # noqa: S608 - constant columns
                (token_id,),
            ).fetchone()
            return None if row is None else token_record(row)

        return await self._run(q)

    # --- enrollment --------------------------------------------------------------

    async def enroll(
        self, token_id: str, secret_hash: bytes, now: int, cert: CertificateRecord, *, audit: Audit = None
    ) -> Enrollment | None:
        def q(db: sqlite3.Connection) -> Enrollment | None:
            # The conditional UPDATE is the single-use guarantee: of two
            # racing enrollments only one sees rowcount 1.
            consumed = db.execute(
                "UPDATE join_tokens SET used_at=?, used_by_serial=?"
                " WHERE token_id=? AND secret_hash=? AND used_at IS NULL AND expires_at>? AND name=?",
                (now, cert.serial, token_id, secret_hash, now, cert.agent_name),
            ).rowcount
            if consumed != 1:
                return None
            groups_json, allow, replace = db.execute(
                "SELECT groups_json, allow_reenroll, replace_existing FROM join_tokens WHERE token_id=?",
                (token_id,),
            ).fetchone()
            name = cert.agent_name
            revoked = db.execute("SELECT revoked_at FROM agents WHERE name=?", (name,)).fetchone()
            if revoked and revoked[0] is not None and not allow:
                # Raising rolls back: the token stays unused.
                raise rules.reenroll_refused(name)
            db.execute(
                "INSERT INTO agents(name, created_at, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET updated_at=excluded.updated_at, revoked_at=NULL",
                (name, now, now),
            )
            # Checked again here: the token may predate the certificate (two tokens for one name).
            # A raise rolls back the whole write, the upsert above and the token included.
            valid = _valid_serials(db, name, now)
            if valid and not replace:
                raise rules.name_in_use(name, at_enroll=True)
            superseded: list[RevocationEvent] = []
            for serial in valid:
                db.execute(
                    "UPDATE certificates SET revoked_at=?, revocation_reason='superseded' WHERE serial=?",
                    (now, serial),
                )
                superseded.append(append_event(db, "cert", "superseded", now, serial=serial, agent=name))
            _insert_certificate(db, cert, token_id, groups_json)
            created = db.execute("SELECT created_at FROM agents WHERE name=?", (name,)).fetchone()[0]
            agent = AgentRecord(name, tuple(json.loads(groups_json)), created, cert)
            return Enrollment(agent, tuple(superseded))

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
        def q(db: sqlite3.Connection) -> bool:
            agent = db.execute("SELECT revoked_at FROM agents WHERE name=?", (cert.agent_name,)).fetchone()
            old = db.execute("SELECT revoked_at FROM certificates WHERE serial=?", (renewed_from,)).fetchone()
            if agent is None or agent[0] is not None or old is None or old[0] is not None:
                raise rules.renewal_refused(cert.agent_name, renewed_from)
            if not_renewed_since is not None:
                last = db.execute(
                    "SELECT MAX(issued_at) FROM certificates WHERE agent_name=? AND renewed_from IS NOT NULL",
                    (cert.agent_name,),
                ).fetchone()[0]
                if last is not None and last > not_renewed_since:
                    raise rules.renewed_too_soon(cert.agent_name, last, not_renewed_since, cert.issued_at)
            _insert_certificate(db, cert, None, json.dumps(list(groups)), renewed_from)
            db.execute("UPDATE agents SET updated_at=? WHERE name=?", (cert.issued_at, cert.agent_name))
            return True

        await self._write(q, audit)

    # --- agents ------------------------------------------------------------------

    async def get_agent_by_serial(self, serial: str) -> AgentRecord | None:
        def q() -> AgentRecord | None:
            row = self._db.execute(
                f"SELECT {AGENT_COLUMNS} FROM certificates c"  # noqa: S608 - constant columns
                " JOIN agents a ON a.name = c.agent_name WHERE c.serial=?",
                (serial,),
            ).fetchone()
            return None if row is None else agent_record(row)

        return await self._run(q)

    async def get_agent(self, name: str) -> AgentRecord | None:
        def q() -> AgentRecord | None:
            row = self._db.execute(
                f"{_AGENTS_WITH_LATEST} WHERE a.name=?",
                (name,),
            ).fetchone()
            return None if row is None else agent_record(row)

        return await self._run(q)

    async def list_agents(self) -> list[AgentRecord]:
        def q() -> list[AgentRecord]:
            rows = self._db.execute(f"{_AGENTS_WITH_LATEST} ORDER BY a.name").fetchall()
            return [agent_record(r) for r in rows]

        return await self._run(q)

    async def is_known_agent(self, name: str, now: int) -> bool:
        def q() -> bool:
            return bool(
                self._db.execute(
                    "SELECT EXISTS (SELECT 1 FROM agents WHERE name=?) OR EXISTS (SELECT 1 FROM join_tokens"
                    " WHERE name=? AND used_at IS NULL AND expires_at>?)",
                    (name, name, now),
                ).fetchone()[0]
            )

        return await self._run(q)
