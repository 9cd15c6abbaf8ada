"""Events other replicas commit: read from the shared log, in order, and applied here once each.

A replica publishes its own revocations the moment they commit (see
revocation.py). Those of other replicas arrive as wake-ups from the store
(PostgreSQL NOTIFY); a wake-up says only "look at the log", and this reads
every event after the last one applied, in sequence order, skipping those
this replica already published itself. The log is the truth: a wake-up lost
while the listener reconnects delays an event, never loses it, because the
store wakes the follower again after every reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kms.errors import KmsError
from server.feed import RevocationFeed
from server.store import RevocationEvent, Store

__all__ = ["EventFollower"]

logger = logging.getLogger(__name__)

_PAGE = 500


class EventFollower:
    def __init__(
        self,
        store: Store,
        feed: RevocationFeed,
        apply: Callable[[RevocationEvent], None],
        connected: Callable[[bool], None] = lambda _up: None,
    ) -> None:
        self._store = store
        self._feed = feed
        self._apply = apply
        self._connected = connected
        # Every event up to here was applied (or published by this replica).
        self._applied = feed.last_seq
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Follows until cancelled."""
        listener = asyncio.create_task(self._store.follow_events(self._wake.set, self._connected))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self.catch_up()
                except KmsError as exc:  # the store is unreachable: its reconnect wakes us again
                    logger.warning("cannot read the event log: will retry", extra={"error": str(exc)})
        finally:
            listener.cancel()

    async def catch_up(self) -> int:
        """Applies every event after the last one applied; returns how many were new here."""
        applied = 0
        while page := await self._store.events_after(self._applied, _PAGE):
            for event in page:
                if not self._feed.has_published(event.seq):
                    self._apply(event)
                    applied += 1
                self._applied = event.seq
        return applied
