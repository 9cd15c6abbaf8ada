"""Key tables of the PostgreSQL store: versions, grants and the release log.

Every change to a key first locks its row in ``keys`` (FOR UPDATE), so two
replicas rotating or revoking the same key at once take turns: versions
never fork and never repeat.
"""

from __future__ import annotations

import contextlib

import asyncpg

from server.store import rules
from server.store.base import Audit, Grant, KeyRecord, KeyVersionRecord, RevocationEvent, SealFn
from server.store.postgres_base import CONNECTION_ERRORS, Conn, PostgresBase
from server.store.postgres_events import add_current_version, append_event, lock_certificates
from server.store.rows import VERSION_COLUMNS

__all__ = ["PostgresKeys"]


class PostgresKeys(PostgresBase):
    """Key methods of PostgresStore."""

    @staticmethod
    async def _key(conn: Conn, name: str, *, lock: bool = False) -> KeyRecord:
        row = await conn.fetchrow(
            # FOR UPDATE only when asked: NO KEY UPDATE is the weakest lock that still orders writers.
            "SELECT name, current_version, created_at FROM keys WHERE name=$1 FOR NO KEY UPDATE"
            if lock
            else "SELECT name, current_version, created_at FROM keys WHERE name=$1",
            name,
        )
        if row is None:
            raise rules.no_key(name)
        versions = tuple(
            KeyVersionRecord(*r)
            for r in await conn.fetch(
                f"SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_name=$1 ORDER BY version",  # noqa: S608
                name,
            )
        )
        grants = tuple(
            Grant(r[0], r[1])
            for r in await conn.fetch(
                "SELECT kind, grantee FROM key_grants WHERE key_name=$1 ORDER BY kind, grantee", name
            )
        )
        return KeyRecord(row[0], row[1], row[2], versions, grants)

    async def create_key(
        self, name: str, now: int, seal: SealFn, grants: list[Grant], *, audit: Audit = None
    ) -> KeyRecord:
        async def q(conn: Conn) -> KeyRecord:
            inserted = await conn.execute(
                "INSERT INTO keys(name, current_version, created_at) VALUES ($1, 1, $2) ON CONFLICT DO NOTHING",
                name,
                now,
            )
            if self._rowcount(inserted) != 1:
                raise rules.key_exists(name)
            await conn.execute(
                "INSERT INTO key_versions VALUES ($1, 1, 'active', $2, $3, $4)", name, seal(1), now, now
            )
            await conn.executemany(
                "INSERT INTO key_grants VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                [(name, g.kind, g.grantee, now) for g in grants],
            )
            return await self._key(conn, name)

        return await self._write(q, audit)

    async def rotate_key(
        self, name: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent]:
        async def q(conn: Conn) -> tuple[KeyRecord, RevocationEvent]:
            current = (await self._key(conn, name, lock=True)).current_version
            new = current + 1
            # KMIP: a rotated-out version is Deactivated (decrypt only), unless already worse.
            await conn.execute(
                "UPDATE key_versions SET state='deactivated', state_changed_at=$1"
                " WHERE key_name=$2 AND version=$3 AND state='active'",
                now,
                name,
                current,
            )
            await add_current_version(conn, name, new, seal, now)
            event = await append_event(conn, "rotate", "superseded", now, key=(name, new))
            return await self._key(conn, name), event

        return await self._write(q, audit)

    async def grant_key(self, name: str, grant: Grant, now: int, *, audit: Audit = None) -> KeyRecord:
        async def q(conn: Conn) -> KeyRecord:
            await self._key(conn, name, lock=True)
            await conn.execute(
                "INSERT INTO key_grants VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                name,
                grant.kind,
                grant.grantee,
                now,
            )
            return await self._key(conn, name)

        return await self._write(q, audit)

    async def ungrant_key(self, name: str, grant: Grant, *, audit: Audit = None) -> KeyRecord:
        async def q(conn: Conn) -> KeyRecord:
            await self._key(conn, name, lock=True)
            removed = await conn.execute(
                "DELETE FROM key_grants WHERE key_name=$1 AND kind=$2 AND grantee=$3",
                name,
                grant.kind,
                grant.grantee,
            )
            if not self._rowcount(removed):
                raise rules.no_grant(name, grant)
            return await self._key(conn, name)

        return await self._write(q, audit)

    async def list_keys(self) -> list[KeyRecord]:
        async def q(conn: Conn) -> list[KeyRecord]:
            names = [r[0] for r in await conn.fetch("SELECT name FROM keys ORDER BY name")]
            return [await self._key(conn, n) for n in names]

        return await self._read(q)

    async def destroy_key_version(
        self, name: str, version: int, now: int, *, audit: Audit = None
    ) -> KeyRecord:
        async def q(conn: Conn) -> KeyRecord:
            key = await self._key(conn, name, lock=True)
            found = [v for v in key.versions if v.version == version]
            if not found:
                raise rules.no_version(name, version)
            if version == key.current_version:
                raise rules.still_current(name, version)
            new_state = rules.destroyed_state(found[0].state)
            if new_state is not None:
                await conn.execute(
                    "UPDATE key_versions SET state=$1, sealed_material=NULL, state_changed_at=$2"
                    " WHERE key_name=$3 AND version=$4",
                    new_state,
                    now,
                    name,
                    version,
                )
            return await self._key(conn, name)

        record = await self._write(q, audit)
        # The old row version (sealed material) stays in the table's pages until
        # VACUUM frees them; ask for that now rather than at autovacuum's leisure.
        with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
            async with self._pool.acquire(timeout=10) as conn:
                await conn.execute("VACUUM key_versions")
        return record

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
        async def q(conn: Conn) -> KeyVersionRecord:
            # The caller's certificate lock (shared): a revocation of it, on any replica, has
            # either committed (and is read below) or waits until this release has.
            await lock_certificates(conn, [serial], shared=True)
            row = await conn.fetchrow(
                "SELECT (SELECT COALESCE(revocation_reason, 'unspecified') FROM certificates"
                " WHERE serial=$1 AND revoked_at IS NOT NULL),"
                " EXISTS (SELECT 1 FROM key_grants WHERE key_name=$2"
                " AND ((kind='agent' AND grantee=$3) OR (kind='group' AND grantee = ANY($4::text[]))))",
                serial,
                name,
                agent,
                list(groups),
            )
            revoked, granted = row
            if revoked is not None:
                raise rules.caller_revoked(serial, revoked)
            if not granted:
                raise rules.not_granted(name)
            wanted = version or await conn.fetchval("SELECT current_version FROM keys WHERE name=$1", name)
            # FOR SHARE: a compromise or destroy committing meanwhile (on any replica)
            # waits for this release, or this release sees it; never both announced and released.
            row = await conn.fetchrow(
                f"SELECT {VERSION_COLUMNS}, sealed_material FROM key_versions WHERE key_name=$1 AND version=$2"  # noqa: S608
                " FOR SHARE",
                name,
                wanted,
            )
            record = rules.check_releasable(name, wanted, None if row is None else KeyVersionRecord(*row))
            await conn.execute(
                "INSERT INTO key_releases(key_name, version, agent_name, cert_serial, released_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                name,
                record.version,
                agent,
                serial,
                now,
            )
            return record

        return await self._write(q, audit)
