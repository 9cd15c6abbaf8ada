"""What falls due on the key schedule (scheduled rotations, expiries, expiry warnings): the key
scheduler's transactions (server/keys/scheduler.py), and the SqlStore methods that run them (a
mixin, as sql/schedules.py's, so store.py stays small).

Every due action is its own transaction that locks the key's row and checks
again, under the lock, what the scheduler read before it: a rotation only if
the key's rotation_due_at is still the one read (and due, the key enabled and
not expired); an expiry or a warning only if its bit in ``expiry_notices`` is
still clear. Two replicas that read the same due work therefore take turns on
the row, and the second finds the work done: each action commits once, across
replicas and restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from server.store.dialect import Tx
from server.store.records import Audit, KeyRecord, RevocationEvent, SealFn
from server.store.sql.events import append_event
from server.store.sql.keys import key, rotate_key
from server.store.sql.methods import Methods

__all__ = [
    "DAY",
    "EXPIRED",
    "NOTICES",
    "WARNED_1D",
    "WARNED_7D",
    "DueMethods",
    "DueWork",
    "due_work",
    "expire_key",
    "next_due",
    "next_rotation_after",
    "note_expiry_warning",
    "rotate_if_due",
]

T = TypeVar("T")

DAY = 86_400
# The bits of keys.expiry_notices: each notice is given once (by whichever replica sets the bit).
WARNED_7D = 1
WARNED_1D = 2
EXPIRED = 4
# Each warning bit, and how long before expires_at it is due.
NOTICES = ((WARNED_7D, 7 * DAY), (WARNED_1D, DAY))

# Keys whose scheduled rotation is pending: enabled (rotation pauses while disabled) and
# not expired at ? (an expired key is never rotated).
_ROTATING = (
    "rotation_due_at IS NOT NULL AND rotate_every IS NOT NULL AND disabled_at IS NULL"
    " AND (expires_at IS NULL OR expires_at > ?)"
)
# When a key's next expiry notice is due: the first of its unset bits, in time order.
_NOTICE_AT = (
    f"CASE WHEN (expiry_notices & {WARNED_7D}) = 0 THEN expires_at - {7 * DAY}"
    f" WHEN (expiry_notices & {WARNED_1D}) = 0 THEN expires_at - {DAY} ELSE expires_at END"
)
_NOTICING = f"expires_at IS NOT NULL AND (expiry_notices & {EXPIRED}) = 0"


@dataclass(frozen=True)
class DueWork:
    """What is due at a time: rotations (name, key type, due time) and expiry notices
    (name, expires_at, bits given), each oldest first."""

    rotations: list[tuple[str, str, int]]
    notices: list[tuple[str, int, int]]


def next_rotation_after(due: int, period: int, now: int) -> int:
    """The first point of the grid due + k*period (k >= 1) after now: a server that was down
    through several periods rotates once, and keeps the key's rhythm."""
    return due + (max(now - due, 0) // period + 1) * period


async def next_due(tx: Tx, now: int) -> int | None:
    """The earliest time anything of the schedule is pending (possibly already past), or None."""
    rotation = await tx.fetchval(f"SELECT MIN(rotation_due_at) FROM keys WHERE {_ROTATING}", now)  # noqa: S608
    notice = await tx.fetchval(f"SELECT MIN({_NOTICE_AT}) FROM keys WHERE {_NOTICING}")  # noqa: S608
    pending = [int(t) for t in (rotation, notice) if t is not None]
    return min(pending) if pending else None


async def due_work(tx: Tx, now: int, limit: int) -> DueWork:
    """Up to limit rotations and limit notices due at now."""
    rotations = await tx.fetch(
        f"SELECT name, key_type, rotation_due_at FROM keys WHERE rotation_due_at <= ? AND {_ROTATING}"  # noqa: S608
        " ORDER BY rotation_due_at, name LIMIT ?",
        now,
        now,
        limit,
    )
    notices = await tx.fetch(
        f"SELECT name, expires_at, expiry_notices FROM keys WHERE {_NOTICING} AND {_NOTICE_AT} <= ?"  # noqa: S608
        " ORDER BY expires_at, name LIMIT ?",
        now,
        limit,
    )
    return DueWork(
        [(r[0], r[1], int(r[2])) for r in rotations], [(r[0], int(r[1]), int(r[2])) for r in notices]
    )


async def rotate_if_due(
    tx: Tx, name: str, due: int, now: int, seal: SealFn
) -> tuple[KeyRecord, RevocationEvent] | None:
    """A rotation exactly as `key rotate` makes it, if the key is still due at due; the next due
    time advances past now. None (nothing written) when another replica or an earlier run got
    there first, an administrator changed the schedule (`key set`), or the key was disabled or
    expired meanwhile. A manual `key rotate` moves no due time: the grid stays."""
    row = await tx.fetchrow(
        tx.locked(
            "SELECT rotation_due_at, rotate_every, disabled_at, expires_at FROM keys WHERE name=?",
            "FOR NO KEY UPDATE",
        ),
        name,
    )
    if row is None or row[0] != due or due > now or row[1] is None or row[2] is not None:
        return None
    if row[3] is not None and row[3] <= now:
        return None
    record, event = await rotate_key(tx, name, now, seal)
    following = next_rotation_after(due, int(row[1]), now)
    await tx.execute("UPDATE keys SET rotation_due_at=? WHERE name=?", following, name)
    return replace(record, rotation_due_at=following), event


async def expire_key(tx: Tx, name: str, now: int) -> tuple[KeyRecord, RevocationEvent] | None:
    """At expires_at: every active version is deactivated, with an 'expire' event; None when
    it was done already (or the expiry moved past now meanwhile)."""
    changed = await tx.execute(
        f"UPDATE keys SET expiry_notices = expiry_notices | {EXPIRED | WARNED_1D | WARNED_7D}"  # noqa: S608
        f" WHERE name=? AND expires_at <= ? AND (expiry_notices & {EXPIRED}) = 0",
        name,
        now,
    )
    if not changed:
        return None
    current = (await key(tx, name, lock=True)).current_version
    # KMIP: a Deactivated version may still decrypt, never encrypt.
    await tx.execute(
        "UPDATE key_versions SET state='deactivated', state_changed_at=?, deactivated_at=?"
        " WHERE key_name=? AND state='active'",
        now,
        now,
        name,
    )
    event = await append_event(tx, "expire", "expired", now, key=(name, current))
    return await key(tx, name), event


async def note_expiry_warning(tx: Tx, name: str, expires_at: int, bits: int) -> bool | None:
    """Sets the warning bits given for the key's expiry at expires_at; None when another
    replica (or an earlier run) set them first, or the expiry changed meanwhile."""
    changed = await tx.execute(
        "UPDATE keys SET expiry_notices = expiry_notices | ?"
        " WHERE name=? AND expires_at=? AND (expiry_notices & ?) <> ?",
        bits,
        name,
        expires_at,
        bits,
        bits,
    )
    return True if changed else None


class DueMethods(Methods):
    """SqlStore's methods for the key scheduler (see sql/store.py for _read and _change)."""

    async def next_schedule_due(self, now: int) -> int | None:
        """The earliest time a scheduled rotation or an expiry notice is pending (maybe past), or None."""
        return await self._read(lambda tx: next_due(tx, now))

    async def schedule_due(self, now: int, limit: int) -> DueWork:
        """Up to limit rotations and limit expiry notices due at now, oldest first."""
        return await self._read(lambda tx: due_work(tx, now, limit))

    async def rotate_if_due(
        self, name: str, due: int, now: int, seal: SealFn, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent] | None:
        """Rotates the key as rotate_key does if its rotation is still due at due (and it is enabled and
        not expired), and moves its next due time past now; None, writing nothing, otherwise."""
        return await self._change(lambda tx: rotate_if_due(tx, name, due, now, seal), audit, invalidates=True)

    async def expire_key(
        self, name: str, now: int, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent] | None:
        """Deactivates every active version of a key whose expiry has come, with an 'expire' event;
        None, writing nothing, when that was done already."""
        return await self._change(lambda tx: expire_key(tx, name, now), audit, invalidates=True)

    async def note_expiry_warning(
        self, name: str, expires_at: int, bits: int, *, audit: Audit = None
    ) -> bool:
        """Records that the warnings bits were given for the expiry at expires_at; False (nothing
        written) when they had been, or the expiry changed."""
        done = await self._change(lambda tx: note_expiry_warning(tx, name, expires_at, bits), audit)
        return done is not None
