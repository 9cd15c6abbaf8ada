"""Key tables of the SQLite store: versions, grants and the release log."""

from __future__ import annotations

import sqlite3
from typing import TypeVar

from kms.errors import FailedPrecondition
from server.store import rules
from server.store.base import Audit, Grant, KeyRecord, KeyVersionRecord, RevocationEvent, SealFn
from server.store.rows import VERSION_COLUMNS
from server.store.sqlite_base import SqliteBase
from server.store.sqlite_events import add_current_version, append_event

__all__ = ["SqliteKeys"]

T = TypeVar("T")


class SqliteKeys(SqliteBase):
    """Key methods of SqliteStore."""

    def _key(self, db: sqlite3.Connection, name: str) -> KeyRecord:
        row = db.execute(
            "SELECT name, current_version, created_at FROM keys WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            raise rules.no_key(name)
        versions = tuple(
            KeyVersionRecord(*r)
            for r in db.execute(
                f"SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_name=? ORDER BY version",  # noqa: S608
                (name,),
            )
        )
        grants = tuple(
            Grant(k, g)
            for k, g in db.execute(
                "SELECT kind, grantee FROM key_grants WHERE key_name=? ORDER BY kind, grantee", (name,)
            )
        )
        return KeyRecord(row[0], row[1], row[2], versions, grants)

    async def create_key(
        self, name: str, now: int, seal: SealFn, grants: list[Grant], *, audit: Audit = None
    ) -> KeyRecord:
        def q(db: sqlite3.Connection) -> KeyRecord:
            if db.execute("SELECT 1 FROM keys WHERE name=?", (name,)).fetchone():
                raise rules.key_exists(name)
            db.execute("INSERT INTO keys(name, current_version, created_at) VALUES (?, 1, ?)", (name, now))
            db.execute(
                "INSERT INTO key_versions VALUES (?, 1, 'active', ?, ?, ?)",
                (name, seal(1), now, now),
            )
            db.executemany(
                "INSERT OR IGNORE INTO key_grants VALUES (?, ?, ?, ?)",
                [(name, g.kind, g.grantee, now) for g in grants],
            )
            return self._key(db, name)

        return await self._write(q, audit, invalidates=True)

    async def rotate_key(
        self, name: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent]:
        def q(db: sqlite3.Connection) -> tuple[KeyRecord, RevocationEvent]:
            current = self._key(db, name).current_version
            new = current + 1
            # KMIP: a rotated-out version is Deactivated (decrypt only), unless already worse.
            db.execute(
                "UPDATE key_versions SET state='deactivated', state_changed_at=?"
                " WHERE key_name=? AND version=? AND state='active'",
                (now, name, current),
            )
            add_current_version(db, name, new, seal, now)
            # Tells watching agents to refresh key files that follow the current version.
            event = append_event(db, "rotate", "superseded", now, key=(name, new))
            return self._key(db, name), event

        return await self._write(q, audit, invalidates=True)

    async def grant_key(self, name: str, grant: Grant, now: int, *, audit: Audit = None) -> KeyRecord:
        def q(db: sqlite3.Connection) -> KeyRecord:
            self._key(db, name)
            db.execute(
                "INSERT OR IGNORE INTO key_grants VALUES (?, ?, ?, ?)", (name, grant.kind, grant.grantee, now)
            )
            return self._key(db, name)

        return await self._write(q, audit, invalidates=True)

    async def ungrant_key(self, name: str, grant: Grant, *, audit: Audit = None) -> KeyRecord:
        def q(db: sqlite3.Connection) -> KeyRecord:
            self._key(db, name)
            removed = db.execute(
                "DELETE FROM key_grants WHERE key_name=? AND kind=? AND grantee=?",
                (name, grant.kind, grant.grantee),
            ).rowcount
            if not removed:
                raise rules.no_grant(name, grant)
            return self._key(db, name)

        return await self._write(q, audit, invalidates=True)

    async def list_keys(self) -> list[KeyRecord]:
        def q() -> list[KeyRecord]:
            names = [r[0] for r in self._db.execute("SELECT name FROM keys ORDER BY name")]
            return [self._key(self._db, n) for n in names]

        return await self._run(q)

    async def destroy_key_version(
        self, name: str, version: int, now: int, *, audit: Audit = None
    ) -> KeyRecord:
        def q(db: sqlite3.Connection) -> KeyRecord:
            key = self._key(db, name)
            found = [v for v in key.versions if v.version == version]
            if not found:
                raise rules.no_version(name, version)
            if version == key.current_version:
                raise rules.still_current(name, version)
            new_state = rules.destroyed_state(found[0].state)
            if new_state is not None:
                db.execute(
                    "UPDATE key_versions SET state=?, sealed_material=NULL, state_changed_at=?"
                    " WHERE key_name=? AND version=?",
                    (new_state, now, name, version),
                )
            return self._key(db, name)

        def run() -> KeyRecord:
            record = self._tx(q, audit, invalidates=True)
            if not self._erase_wal():
                raise FailedPrecondition(
                    f"version {version} of {name!r} is destroyed, but its old bytes are still in the write-ahead log "
                    "because another process has the database open: close it; the erasure completes at the next "
                    "destroy or server start"
                )
            return record

        return await self._run(run)

    def _erase_wal(self) -> bool:
        """Copies the WAL into the database (secure_delete zeroed freed pages) and truncates it.

        Returns False when a reader in another process blocks the checkpoint;
        the old page images then stay in the WAL until a later checkpoint.
        """
        db = self._db
        db.execute("PRAGMA busy_timeout=200")  # never hold the store thread for long
        try:
            for _ in range(5):
                busy, log, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy and log in (done, 0, -1):
                    return True
            return False
        finally:
            db.execute("PRAGMA busy_timeout=5000")

    async def release_key_version(
        self,
        name: str,
        version: int | None,
        agent: str,
        groups: tuple[str, ...],
        serial: str,
        now: int,
        *,
        audit: Audit = None,
    ) -> KeyVersionRecord:
        def q(db: sqlite3.Connection) -> KeyVersionRecord:
            # Never cached: a revocation committed in an earlier batch, or earlier in this
            # one, refuses the release (one writer, so nothing can commit in between).
            revoked = db.execute(
                "SELECT revocation_reason FROM certificates WHERE serial=? AND revoked_at IS NOT NULL",
                (serial,),
            ).fetchone()
            if revoked is not None:
                raise rules.caller_revoked(serial, revoked[0] or "unspecified")
            # The authorization is the same for every release until a key changes:
            # cached on this thread, cleared by each change (see SqliteBase).
            cache_key = ("release", name, version, agent, groups)
            record = self._read_cache.get(cache_key)
            if record is None:
                record = self._releasable(db, name, version, agent, groups)
                self._remember(cache_key, record)
            self._defer(
                "INSERT INTO key_releases(key_name, version, agent_name, cert_serial, released_at) VALUES (?, ?, ?, ?, ?)",
                (name, record.version, agent, serial, now),
            )
            return record

        # Reads, then deferred rows only: no savepoint needed.
        return await self._write(q, audit, savepoint=False)

    def _releasable(
        self, db: sqlite3.Connection, name: str, version: int | None, agent: str, groups: tuple[str, ...]
    ) -> KeyVersionRecord:
        """The version agent may have released, or the reason it may not."""
        marks = ",".join("?" * len(groups))
        group_clause = f" OR (kind='group' AND grantee IN ({marks}))" if groups else ""
        granted = db.execute(
            f"SELECT 1 FROM key_grants WHERE key_name=? AND ((kind='agent' AND grantee=?){group_clause})",  # noqa: S608
            (name, agent, *groups),
        ).fetchone()
        if not granted:
            raise rules.not_granted(name)
        wanted = version or db.execute("SELECT current_version FROM keys WHERE name=?", (name,)).fetchone()[0]
        row = db.execute(
            f"SELECT {VERSION_COLUMNS}, sealed_material FROM key_versions WHERE key_name=? AND version=?",  # noqa: S608
            (name, wanted),
        ).fetchone()
        return rules.check_releasable(name, wanted, None if row is None else KeyVersionRecord(*row))
