"""The Store's methods for the key scheduler (server/keys/scheduler.py): sql/schedule.py's
transactions, each run by the backend with its audit record, as SqlStore runs the others.

A base of SqlStore, kept apart so the store's main module stays small.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from server.store.dialect import Body
from server.store.records import Audit, KeyRecord, RevocationEvent, SealFn
from server.store.sql import schedule
from server.store.sql.schedule import DueWork

__all__ = ["ScheduleStore"]

T = TypeVar("T")


class ScheduleStore:
    def _read(self, body: Body[T]) -> Awaitable[T]:
        raise NotImplementedError  # SqlStore's

    def _change(
        self, body: Body[T], audit_with: Audit = None, *, savepoint: bool = True, invalidates: bool = False
    ) -> Awaitable[T]:
        raise NotImplementedError  # SqlStore's

    async def next_schedule_due(self, now: int) -> int | None:
        """The earliest time a scheduled rotation or an expiry notice is pending (maybe past), or None."""
        return await self._read(lambda tx: schedule.next_due(tx, now))

    async def schedule_due(self, now: int, limit: int) -> DueWork:
        """Up to limit rotations and limit expiry notices due at now, oldest first."""
        return await self._read(lambda tx: schedule.due_work(tx, now, limit))

    async def rotate_if_due(
        self, name: str, due: int, now: int, seal: SealFn, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent] | None:
        """Rotates the key as rotate_key does if its rotation is still due at due (and it is enabled and
        not expired), and moves its next due time past now; None, writing nothing, otherwise."""
        return await self._change(
            lambda tx: schedule.rotate_if_due(tx, name, due, now, seal), audit, invalidates=True
        )

    async def expire_key(
        self, name: str, now: int, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent] | None:
        """Deactivates every active version of a key whose expiry has come, with an 'expire' event;
        None, writing nothing, when that was done already."""
        return await self._change(lambda tx: schedule.expire_key(tx, name, now), audit, invalidates=True)

    async def note_expiry_warning(
        self, name: str, expires_at: int, bits: int, *, audit: Audit = None
    ) -> bool:
        """Records that the warnings bits were given for the expiry at expires_at; False (nothing
        written) when they had been, or the expiry changed."""
        done = await self._change(lambda tx: schedule.note_expiry_warning(tx, name, expires_at, bits), audit)
        return done is not None
