"""Key schedules: a key's expiry and rotation period, changed by ``key set``, and the keys
expiring soon that /metrics counts.

The transactions (SqlStore's methods for them are in key_store.py). Each change locks the key's row
first, as every key change does (sql/keys.py), and clears SQLite's release
cache: a release reads expires_at inside its own transaction.
"""

from __future__ import annotations

from typing import TypeVar

from server.store import rules
from server.store.dialect import Tx
from server.store.records import KeyRecord, ScheduleChange
from server.store.sql.keys import key

__all__ = ["count_keys_expiring", "set_key_schedule"]

T = TypeVar("T")


async def set_key_schedule(tx: Tx, name: str, change: ScheduleChange, now: int) -> KeyRecord:
    """Applies change to key name. Raises NotFound, or FailedPrecondition for an expired key.

    A new rotation period restarts the count: the next rotation is due a period
    from now (None clears both). A changed expiry forgets the expiry notices
    given, so the warnings for the new date are given in their turn. An expired
    key gets no new expiry and no new rotation period (it may only drop its period).
    """
    await tx.lock_key(name)
    record = await key(tx, name, lock=True)
    expired = record.expires_at is not None and record.expires_at <= now
    if expired and (change.set_expiry or change.rotate_every is not None):
        assert record.expires_at is not None
        raise rules.expiry_final(name, record.expires_at)
    if change.set_expiry and change.expires_at != record.expires_at:
        await tx.execute(
            "UPDATE keys SET expires_at=?, expiry_notices=0 WHERE name=?", change.expires_at, name
        )
    if change.set_rotation:
        period = change.rotate_every
        await tx.execute(
            "UPDATE keys SET rotate_every=?, rotation_due_at=? WHERE name=?",
            period,
            None if period is None else now + period,
            name,
        )
    return await key(tx, name)


async def count_keys_expiring(tx: Tx, now: int, within: tuple[int, ...]) -> tuple[int, ...]:
    """How many keys not yet expired expire within each of these many seconds: one range scan
    of the keys_by_expiry index, as long as the widest window."""
    if not within:
        return ()
    sums = ", ".join("COALESCE(SUM(CASE WHEN expires_at <= ? THEN 1 ELSE 0 END), 0)" for _ in within)
    row = await tx.fetchrow(
        f"SELECT {sums} FROM keys WHERE expires_at > ? AND expires_at <= ?",  # noqa: S608 - placeholders only
        *(now + seconds for seconds in within),
        now,
        now + max(within),
    )
    return tuple(int(n) for n in row)
