"""The key scheduler: scheduled rotations, expiry at expires_at, and the warnings before it.

How it notices. The schedule lives in the store (keys.rotation_due_at, expires_at and
the expiry_notices bits), never only in memory, so every replica and every restart
sees the same one. The scheduler asks the store for the earliest pending time (the
due time of an enabled key's rotation; for a key with an expiry, the first of
expires_at - 7 days, expires_at - 1 day and expires_at whose notice was not given),
does whatever is due, then sleeps until the next pending time, but never longer than
the poll interval (the `key_schedule_poll` setting, default 5 s), so that a schedule
set through another replica is seen within it. A create, set or enable on this
replica wakes it at once (``wake``).

Exactly once. Each due action is its own transaction that locks the key's row and
checks again what was read (store/sql/due.py): a rotation happens only if the
key's due time is still the one read, and it moves the due time to the next point of
the key's grid after now (due + k * period), so a server that was down through
several periods rotates once when it starts, and two replicas racing for the same
due time make one rotation (the second finds the due time moved, and does nothing).
A notice happens only if its bit is still clear, so one replica gives it, once,
whatever the restarts.

Disabled keys do not rotate (rotation pauses); once enabled, a key whose rotation
fell due meanwhile rotates once, at the next tick. An expired key never rotates.
A scheduled rotation is a `key rotate` in every effect (new active version, the old
one deactivated, the 'rotate' event to the key's grantees), audited with actor
``scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from kms.errors import KmsError
from kms.times import iso
from server.clock import Clock, now_seconds
from server.keys.service import KeyService
from server.store import AuditEntry, KeyRecord, RevocationEvent, Store
from server.store.completion import after_commit
from server.store.sql.due import NOTICES

__all__ = ["ACTOR", "KeyScheduler"]

logger = logging.getLogger(__name__)

ACTOR = "scheduler"
# Due work read per query, and due actions in flight at once (SQLite commits them in groups).
_BATCH = 500
_IN_FLIGHT = 32


class KeyScheduler:
    def __init__(
        self,
        store: Store,
        keys: KeyService,
        clock: Clock,
        publish: Callable[[RevocationEvent], object],
        poll: float,
        woken: asyncio.Event | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._publish = publish
        self._poll = poll
        # Set by wake() (KeyService calls it after a schedule changes here).
        self._woken = woken or asyncio.Event()

    def wake(self) -> None:
        """Look at the schedule now: it changed on this replica."""
        self._woken.set()

    async def run_forever(self) -> None:
        """Does what is due, then sleeps until the next pending time (at most the poll interval)."""
        while True:
            delay = self._poll
            try:
                if await self.run_once() == 0:
                    following = await self._store.next_schedule_due(now_seconds(self._clock))
                    if following is not None:
                        delay = min(delay, max(following - self._clock().timestamp(), 0.0))
            except KmsError as exc:  # the store is unreachable: the next poll retries
                logger.warning("cannot read the key schedule: will retry", extra={"error": str(exc)})
            except Exception:  # one bad tick must not end the schedule
                logger.exception("the key scheduler failed: will retry")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._woken.wait()
            self._woken.clear()

    async def run_once(self) -> int:
        """Does every action due now; returns how many failed (0: all done, or nothing was due).

        An action that fails is logged and left for the next poll, not retried at once.
        """
        failed = 0
        while True:
            now = now_seconds(self._clock)
            work = await self._store.schedule_due(now, _BATCH)
            steps: list[Coroutine[Any, Any, object]] = [
                self._rotate(name, key_type, due, now) for name, key_type, due in work.rotations
            ]
            steps += [self._notice(name, expires_at, given, now) for name, expires_at, given in work.notices]
            for start in range(0, len(steps), _IN_FLIGHT):
                results = await asyncio.gather(*steps[start : start + _IN_FLIGHT], return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        failed += 1
                        logger.error("a scheduled key action failed: will retry", exc_info=result)
            if failed or max(len(work.rotations), len(work.notices)) < _BATCH:
                return failed

    async def _rotate(self, name: str, key_type: str, due: int, now: int) -> None:
        def committed(done: tuple[KeyRecord, RevocationEvent] | None) -> None:
            if done is None:  # another replica got there first, or `key set` moved the due time
                return
            record, event = done
            self._publish(event)
            logger.info(
                "key rotated on schedule",
                extra={
                    "key": name,
                    "version": record.current_version,
                    "seq": event.seq,
                    "due": iso(due),
                    "next_due": iso(record.rotation_due_at or 0),
                },
            )

        # A key pair is generated first, off the event loop (wasted if another replica wins).
        seal = await self._keys.make_sealer(name, key_type)
        write = self._store.rotate_if_due(
            name,
            due,
            now,
            seal,
            audit=lambda done: AuditEntry(
                now, ACTOR, "key.rotate", f"key:{name}/v{done[0].current_version} due:{iso(due)}"
            ),
        )
        await after_commit(write, committed)

    async def _notice(self, name: str, expires_at: int, given: int, now: int) -> None:
        if expires_at <= now:
            await after_commit(
                self._store.expire_key(
                    name, now, audit=AuditEntry(now, ACTOR, "key.expire", f"key:{name} at:{iso(expires_at)}")
                ),
                self._expired,
            )
            return
        due = [(bit, before) for bit, before in NOTICES if not given & bit and expires_at - before <= now]
        bits = sum(bit for bit, _ in due)
        if not bits:
            return
        if await self._store.note_expiry_warning(
            name,
            expires_at,
            bits,
            audit=AuditEntry(now, ACTOR, "key.expiry_warning", f"key:{name} at:{iso(expires_at)}"),
        ):
            within = min(before for _, before in due) // 86_400
            logger.warning(
                f"key {name} expires within {within} day{'s' if within > 1 else ''}, at {iso(expires_at)}:"
                " set a later expiry (kms-server key set) or move its users to another key",
                extra={"key": name, "expires_at": iso(expires_at)},
            )

    def _expired(self, done: tuple[KeyRecord, RevocationEvent] | None) -> None:
        if done is None:
            return
        record, event = done
        self._publish(event)
        logger.warning(
            f"key {record.name} expired: every version is deactivated (decrypt only)",
            extra={"key": record.name, "version": record.current_version, "seq": event.seq},
        )
