"""Revocation tables of the PostgreSQL store, and the wake-ups that tell replicas of new events.

Sequence numbers: ``UPDATE counters ... RETURNING`` hands out the next seq
and keeps that row locked until COMMIT, so event-writing transactions commit
one after another in seq order. Any reader that sees seq N therefore sees
every seq below it: a watcher resuming after N can never skip a number
that commits late, and no two replicas ever hand out the same seq.

Wake-ups: each event also sends ``NOTIFY kms_events`` inside its
transaction (delivered only if it commits). A notification carries nothing
but "look at the log": the log stays the truth, so a notification missed
while a listener reconnects costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from server.store import rules
from server.store.base import Audit, CertificateRecord, RevocationEvent, SealFn
from server.store.postgres_base import CERT_LOCKS, CONNECTION_ERRORS, SESSION_SETTINGS, Conn, PostgresBase
from server.store.rows import (
    CERT_COLUMNS,
    DESCENDANTS,
    EVENT_COLUMNS,
    cert_record,
    event_record,
    grantees_json,
)

__all__ = [
    "CHANNEL",
    "PostgresEvents",
    "add_current_version",
    "append_event",
    "lock_certificates",
    "revoked_certificates",
]

logger = logging.getLogger(__name__)

CHANNEL = "kms_events"
# How often a listener checks its connection (and the log, in case).
PROBE_INTERVAL = 5.0
BACKOFF_MAX = 5.0


async def append_event(
    conn: Conn,
    kind: str,
    reason: str,
    now: int,
    *,
    serial: str | None = None,
    agent: str | None = None,
    key: tuple[str, int] | None = None,
) -> RevocationEvent:
    """Appends one event in the caller's transaction, with the next seq, and wakes the other replicas.

    A key event records the key's grantees as of this transaction (see RevocationEvent.grantees).
    """
    key_name, key_version = key if key else (None, None)
    seq = await conn.fetchval("UPDATE counters SET value = value + 1 WHERE name = 'events' RETURNING value")
    grantees = (
        tuple(
            sorted(
                f"{r[0]}:{r[1]}"
                for r in await conn.fetch("SELECT kind, grantee FROM key_grants WHERE key_name=$1", key_name)
            )
        )
        if key_name is not None
        else None
    )
    await conn.execute(
        "INSERT INTO events(seq, kind, serial, agent_name, key_name, key_version, reason, at, grantees)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        seq,
        kind,
        serial,
        agent,
        key_name,
        key_version,
        reason,
        now,
        grantees_json(grantees),
    )
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(seq))
    return RevocationEvent(seq, kind, serial, agent, key_name, key_version, reason, now, grantees)


async def lock_certificates(conn: Conn, serials: list[str], *, shared: bool = False) -> None:
    """Takes each certificate's advisory lock until COMMIT: exclusive to revoke, shared to release.

    Every path that revokes a certificate takes its lock before the UPDATE, and
    a key release takes it (shared) before reading whether its caller is
    revoked: a release either commits before the revocation, or reads it
    committed and is refused. A row lock (FOR SHARE against FOR UPDATE) would
    do the same, but shared row lockers can starve a waiting FOR UPDATE: an
    agent fetching keys flat out held off its own revocation for as long as
    it kept going. PostgreSQL's lock manager queues a new shared request
    behind a waiting exclusive one, so a revocation waits only for the
    releases already under way. Taken in the order of their keys, in one
    statement, so two revocations never deadlock on them.
    """
    if not serials:
        return
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(
        f"SELECT count({fn}($1, k)) FROM"  # noqa: S608 - one of two constant names
        " (SELECT DISTINCT hashtext(s) AS k FROM unnest($2::text[]) AS s ORDER BY k) AS keys",
        CERT_LOCKS,
        serials,
    )


async def add_current_version(conn: Conn, name: str, new: int, seal: SealFn, now: int) -> None:
    """Makes version new of key name, active and current (a rotation, or replacing a compromised one)."""
    await conn.execute(
        "INSERT INTO key_versions VALUES ($1, $2, 'active', $3, $4, $5)", name, new, seal(new), now, now
    )
    await conn.execute("UPDATE keys SET current_version=$1 WHERE name=$2", new, name)


async def revoked_certificates(conn: Conn) -> list[CertificateRecord]:
    rows = await conn.fetch(
        f"SELECT {CERT_COLUMNS} FROM certificates WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial"  # noqa: S608
    )
    return [cert_record(r) for r in rows]


class PostgresEvents(PostgresBase):
    """Revocation methods of PostgresStore."""

    async def revoke_certificate(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        async def q(conn: Conn) -> RevocationEvent | None:
            row = await conn.fetchrow(
                "SELECT agent_name, revoked_at FROM certificates WHERE serial=$1 FOR UPDATE", serial
            )
            if row is None:
                raise rules.no_certificate(serial)
            if row[1] is not None:
                return None
            await lock_certificates(conn, [serial])
            await conn.execute(
                "UPDATE certificates SET revoked_at=$1, revocation_reason=$2 WHERE serial=$3",
                now,
                reason,
                serial,
            )
            return await append_event(conn, "cert", reason, now, serial=serial, agent=row[0])

        return await self._write(q, audit)

    async def revoke_lineage(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> list[RevocationEvent] | None:
        async def q(conn: Conn) -> list[RevocationEvent] | None:
            row = await conn.fetchrow(
                "SELECT agent_name, revoked_at FROM certificates WHERE serial=$1 FOR UPDATE", serial
            )
            if row is None:
                raise rules.no_certificate(serial)
            lineage = [(serial, row[0], row[1])]
            seen = {serial}
            # Locked rows cannot be renewed from any more (a renewal takes FOR SHARE on its
            # parent), but one that committed before a row was locked escaped the snapshot
            # of the statement that locked it: look again until a pass finds nothing new.
            while True:
                found = [
                    tuple(r)
                    for r in await conn.fetch(
                        DESCENDANTS.format(parent="$1") + " ORDER BY c.issued_at, c.serial FOR UPDATE OF c",
                        serial,
                    )
                    if r[0] not in seen
                ]
                if not found:
                    break
                seen.update(r[0] for r in found)
                lineage += found
            await lock_certificates(conn, [cert for cert, _, revoked_at in lineage if revoked_at is None])
            events = []
            for cert, agent, revoked_at in lineage:
                if revoked_at is None:
                    await conn.execute(
                        "UPDATE certificates SET revoked_at=$1, revocation_reason=$2 WHERE serial=$3",
                        now,
                        reason,
                        cert,
                    )
                    events.append(await append_event(conn, "cert", reason, now, serial=cert, agent=agent))
            return events or None

        return await self._write(q, audit)

    async def revoke_agent(
        self, name: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        async def q(conn: Conn) -> RevocationEvent | None:
            row = await conn.fetchrow("SELECT revoked_at FROM agents WHERE name=$1 FOR UPDATE", name)
            if row is None:
                raise rules.no_agent(name)
            serials = [
                r[0]
                for r in await conn.fetch(
                    "SELECT serial FROM certificates WHERE agent_name=$1 AND revoked_at IS NULL ORDER BY serial"
                    " FOR UPDATE",
                    name,
                )
            ]
            if row[0] is not None and not serials:
                return None
            await lock_certificates(conn, serials)
            await conn.execute(
                "UPDATE certificates SET revoked_at=$1, revocation_reason=$2 WHERE agent_name=$3 AND revoked_at IS NULL",
                now,
                reason,
                name,
            )
            await conn.execute(
                "UPDATE agents SET revoked_at=COALESCE(revoked_at, $1) WHERE name=$2", now, name
            )
            return await append_event(conn, "agent", reason, now, serial=",".join(serials), agent=name)

        return await self._write(q, audit)

    async def revoke_key_version(
        self, name: str, version: int, reason: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> RevocationEvent | None:
        async def q(conn: Conn) -> tuple[RevocationEvent, int | None] | None:
            current = await conn.fetchval("SELECT current_version FROM keys WHERE name=$1 FOR UPDATE", name)
            state = await conn.fetchval(
                "SELECT state FROM key_versions WHERE key_name=$1 AND version=$2", name, version
            )
            if current is None or state is None:
                raise rules.no_version(name, version)
            new_state = rules.compromised_state(state)
            if new_state is None:
                return None
            await conn.execute(
                "UPDATE key_versions SET state=$1, state_changed_at=$2 WHERE key_name=$3 AND version=$4",
                new_state,
                now,
                name,
                version,
            )
            replaced_by = None
            if version == current:
                # Nothing may keep encrypting under a compromised version.
                replaced_by = current + 1
                await add_current_version(conn, name, replaced_by, seal, now)
            return await append_event(conn, "key", reason, now, key=(name, version)), replaced_by

        done = await self._write(q, audit)
        return None if done is None else done[0]

    async def last_event(
        self,
        *,
        kind: str,
        serial: str | None = None,
        agent: str | None = None,
        key: tuple[str, int] | None = None,
    ) -> RevocationEvent | None:
        async def q(conn: Conn) -> RevocationEvent | None:
            args: list[object]
            if kind == "cert":
                where, args = "kind='cert' AND serial=$1", [serial]
            elif kind == "agent":
                where, args = "kind='agent' AND agent_name=$1", [agent]
            else:
                assert key is not None
                where, args = "kind=$1 AND key_name=$2 AND key_version=$3", [kind, key[0], key[1]]
            row = await conn.fetchrow(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq DESC LIMIT 1",  # noqa: S608
                *args,
            )
            if row is None and kind == "cert":
                # Revoked together with its agent: that event covers it.
                row = await conn.fetchrow(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='agent' AND ','||serial||',' LIKE $1"  # noqa: S608
                    " ORDER BY seq DESC LIMIT 1",
                    f"%,{serial},%",
                )
            return None if row is None else event_record(row)

        return await self._read(q)

    async def events_after(self, seq: int, limit: int) -> list[RevocationEvent]:
        async def q(conn: Conn) -> list[RevocationEvent]:
            rows = await conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq>$1 ORDER BY seq LIMIT $2",  # noqa: S608
                seq,
                limit,
            )
            return [event_record(r) for r in rows]

        return await self._read(q)

    async def last_seq(self) -> int:
        async def q(conn: Conn) -> int:
            return int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM events"))

        return await self._read(q)

    async def get_certificate(self, serial: str) -> CertificateRecord | None:
        async def q(conn: Conn) -> CertificateRecord | None:
            row = await conn.fetchrow(f"SELECT {CERT_COLUMNS} FROM certificates WHERE serial=$1", serial)  # noqa: S608
            return None if row is None else cert_record(row)

        return await self._read(q)

    async def revoked_certificates(self) -> list[CertificateRecord]:
        return await self._read(revoked_certificates)

    # --- wake-ups from other replicas ---------------------------------------------

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
        """Calls wake() whenever the log may have grown; runs until cancelled.

        LISTENs on its own connection (a pooled one could not keep the
        subscription). After every (re)connect it wakes once, since events may
        have committed while nobody listened; every PROBE_INTERVAL it checks
        the connection and wakes once more, in case. connected(False) while
        the database is unreachable (retried with backoff), then True.
        """
        backoff = 0.2
        while True:
            try:
                conn = await asyncpg.connect(self._url, timeout=10, server_settings=SESSION_SETTINGS)
            except Exception as exc:  # any failure to connect is an outage here: keep trying
                connected(False)
                logger.warning("cannot listen for events: retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda *_: wake())
                connected(True)
                backoff = 0.2
                wake()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(PROBE_INTERVAL):
                            await lost.wait()
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=PROBE_INTERVAL)
                        wake()
            except CONNECTION_ERRORS as exc:
                logger.warning("lost the event listener connection", extra={"error": type(exc).__name__})
            except Exception:  # anything else: still reconnect, never stop listening
                logger.exception("event listener failed: reconnecting")
                await asyncio.sleep(backoff)
            except asyncio.CancelledError:  # the server is stopping: not an outage
                conn.terminate()
                raise
            connected(False)
            conn.terminate()
