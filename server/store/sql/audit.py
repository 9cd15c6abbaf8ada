"""The audit trail's transactions: appending to the chain, keying it, reading it."""

from __future__ import annotations

from collections.abc import Sequence

from kms.audit import KEYED_ACTION, KEYED_ACTOR, AuditRecord, chain_after, keyed_object
from server.store.dialect import Tx
from server.store.records import AUDIT_MARKER, AuditEntry

__all__ = ["INSERT_AUDIT", "append", "audit_after", "open_chain"]

INSERT_AUDIT = "INSERT INTO audit(seq, at, actor, action, object, outcome, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


async def append(tx: Tx, key: bytes | None, entries: Sequence[AuditEntry]) -> None:
    """Appends entries in order to the chain, in tx.

    The head is read once per transaction, under the chain's lock (held until
    COMMIT, so the next writer reads the head this one wrote), then carried along.
    """
    head = tx.chain_head
    if head is None:
        await tx.lock_chain()
        last = await tx.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        head = None if last is None else (int(last[0]), bytes(last[1]))
    records = chain_after(key, head, [(e.at, e.actor, e.action, e.object, e.outcome) for e in entries])
    if records:
        tx.appended(records)
        await tx.insert_later(INSERT_AUDIT, records)
        tx.chain_head = (records[-1].seq, records[-1].hash)


async def open_chain(tx: Tx, key: bytes, now: int) -> int | None:
    """Where the keyed chain begins; marks it, with its first record, on a store never keyed."""
    # Every replica may start at once: the first to take the chain's lock marks it.
    await tx.lock_chain()
    value = await tx.fetchval("SELECT value FROM meta WHERE key=?", AUDIT_MARKER)
    if value is None or (value != "pending" and not value.isdigit()):
        return None
    if value != "pending":
        return int(value)
    first = int(await tx.fetchval("SELECT COALESCE(MAX(seq), 0) FROM audit")) + 1
    await tx.execute("UPDATE meta SET value=? WHERE key=?", str(first), AUDIT_MARKER)
    await append(tx, key, [AuditEntry(now, KEYED_ACTOR, KEYED_ACTION, keyed_object(first))])
    return first


async def audit_after(tx: Tx, seq: int, limit: int) -> list[AuditRecord]:
    rows = await tx.fetch(
        "SELECT seq, at, actor, action, object, outcome, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
        seq,
        limit,
    )
    return [AuditRecord(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bytes(r[7])) for r in rows]
