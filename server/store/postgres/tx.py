"""The dialect's Tx over one asyncpg connection in a transaction.

Several replicas share the database, so what SQLite gets from its single
writer thread comes from PostgreSQL locks here: rows two replicas could race
on are locked before they are read for a decision (``locked``); the audit
chain's head is read under an advisory lock; event sequence numbers come from
a counter row whose lock, held until COMMIT, makes event-writing transactions
commit in seq order (a watcher resuming after N can never skip a number that
commits late); and each event sends ``NOTIFY kms_events``, delivered only if
it commits.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

from kms.audit import AuditRecord
from server.store.ordered import InOrder
from server.store.postgres.connect import AUDIT_LOCK, CERT_LOCKS, KEY_LOCKS, Conn

__all__ = ["CHANNEL", "PgTx"]

CHANNEL = "kms_events"


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str) -> str:
    """sql with its ? placeholders as $1, $2, ... (no statement here has a ? of another kind)."""
    head, *rest = sql.split("?")
    return head + "".join(f"${n}{part}" for n, part in enumerate(rest, 1))


class PgTx:
    insert_order = "inserted"

    def __init__(self, conn: Conn, copies: InOrder | None) -> None:
        self.raw = conn
        self.chain_head: tuple[int, bytes] | None = None
        self._copies = copies
        self._chain_locked = False
        # Audit records appended, with their turn for the audit devices (None: no devices).
        self.appended_records: list[tuple[int | None, list[AuditRecord]]] = []

    def locked(self, sql: str, clause: str) -> str:
        return f"{sql} {clause}"

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self.raw.fetchrow(_numbered(sql), *args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self.raw.fetch(_numbered(sql), *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.raw.fetchval(_numbered(sql), *args)

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self.raw.execute(_numbered(sql), *args)
        return int(status.rsplit(" ", 1)[-1])  # the row count of a command tag such as 'UPDATE 1'

    async def executemany(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self.raw.executemany(_numbered(sql), rows)

    async def insert_later(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self.executemany(sql, rows)

    async def insert_event(self, row: tuple[Any, ...]) -> int:
        seq = int(
            await self.raw.fetchval(
                "UPDATE counters SET value = value + 1 WHERE name = 'events' RETURNING value"
            )
        )
        await self.raw.execute(
            "INSERT INTO events(seq, kind, serial, agent_name, key_name, key_version, reason, at, grantees)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            seq,
            *row,
        )
        # Wakes the other replicas (server/store/postgres/notify.py) once this commits.
        await self.raw.execute("SELECT pg_notify($1, $2)", CHANNEL, str(seq))
        return seq

    async def lock_certificates(self, serials: list[str], *, shared: bool = False) -> None:
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
        await self.raw.execute(
            f"SELECT count({fn}($1, k)) FROM"  # noqa: S608 - one of two constant names
            " (SELECT DISTINCT hashtext(s) AS k FROM unnest($2::text[]) AS s ORDER BY k) AS keys",
            CERT_LOCKS,
            serials,
        )

    async def lock_key(self, name: str) -> None:
        """Takes the key's advisory lock until COMMIT, alone: to disable or enable it."""
        await self.raw.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", KEY_LOCKS, name)

    async def lock_release(self, serial: str, key: str) -> None:
        """Takes the caller's certificate lock and the key's, both shared, in one statement.

        A release then reads whether its caller is revoked and whether the key is
        disabled, and either commits before a revocation or a disable that waits on
        these locks, or reads it committed and is refused. Advisory locks rather than
        row locks for the reason lock_certificates gives: a waiting exclusive request
        is not starved by a flood of shared ones. No path takes both locks alone, so
        no two transactions wait on each other through them.
        """
        await self.raw.execute(
            "SELECT pg_advisory_xact_lock_shared($1, hashtext($2)), pg_advisory_xact_lock_shared($3, hashtext($4))",
            CERT_LOCKS,
            serial,
            KEY_LOCKS,
            key,
        )

    async def lock_chain(self) -> None:
        # Taken as late as it can be (the audit append is a transaction's last step), so
        # this process's records commit in the order their seqs were drawn.
        if not self._chain_locked:
            await self.raw.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
            self._chain_locked = True

    def appended(self, records: list[AuditRecord]) -> None:
        # Drawn under the chain's lock: this process's transactions hold tickets in seq order.
        self.appended_records.append((self._copies.reserve() if self._copies else None, records))

    def cached(self, key: Hashable) -> Any:
        return None  # another replica may have changed it

    def remember(self, key: Hashable, value: Any) -> None:
        return None
