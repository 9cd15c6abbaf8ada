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
import contextlib
import logging
import time
from collections.abc import Callable

from kms.errors import KmsError
from server.revocation.feed import RevocationFeed
from server.store import RevocationEvent, Store

__all__ = ["EventFollower", "EventLogRewritten"]

logger = logging.getLogger(__name__)

_PAGE = 500
POLL_INTERVAL = 5.0
# A log that looks rewritten is read once more this much later before the server stops:
# one read may have gone to a standby that lags.
CONFIRM_AFTER = 1.0


class EventLogRewritten(Exception):  # noqa: N818 - a state, like StopIteration
    """The shared log no longer holds, unchanged, an event this server applied.

    Not a KmsError on purpose: nothing retries it. Sequence numbers after the
    restore point are handed out again, so the server's memory (published
    events, revoked serials, open streams' positions) can no longer be matched
    to the log: it stops, and starts again from the log as it now is.
    """


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
        self._down_since: float | None = None
        # Every event up to here was applied (or published by this replica).
        self._applied = feed.last_seq
        # The log's event at the feed's last_seq when last checked (None: not yet).
        self._last: RevocationEvent | None = None
        self._wake = asyncio.Event()
        # One reader of the log at a time: the loop below and a worker's wake-ups (server/workers/link.py).
        self._reading = asyncio.Lock()

    @property
    def applied(self) -> int:
        """Every event up to this seq was applied here."""
        return self._applied

    def wake(self) -> None:
        """Read the log now (another worker committed an event)."""
        self._wake.set()

    async def run(self) -> None:
        """Follows until cancelled; only EventLogRewritten ends it otherwise."""
        listener: asyncio.Task[None] | None = None
        try:
            while True:
                if listener is None or listener.done():
                    if listener is not None and not listener.cancelled() and listener.exception():
                        logger.error("event listener failed: restarting it", exc_info=listener.exception())
                    listener = asyncio.create_task(
                        self._store.follow_events(self._wake.set, self._on_connected)
                    )
                # Wake-ups bring events within milliseconds; the poll is the floor
                # if a wake-up is lost to a listener that died or reconnects.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self._check_log_intact()
                    await self.catch_up()
                except EventLogRewritten:
                    raise
                except KmsError as exc:  # the store is unreachable: the next wake-up or poll retries
                    logger.warning("cannot read the event log: will retry", extra={"error": str(exc)})
                except Exception:  # never let one bad read end the fan-out between replicas
                    logger.exception("reading the event log failed: will retry")
        finally:
            if listener is not None:
                listener.cancel()

    def _on_connected(self, up: bool) -> None:
        if up:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = time.monotonic()
        self._connected(up)

    def cut_off_for(self) -> float:
        """Seconds since this replica lost its store (0 while it has it): it hears no other replica meanwhile."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def _check_log_intact(self) -> None:
        """Raises EventLogRewritten unless the last event this server sent out is still in the log, unchanged.

        A restored database (or a failover that lost commits) ends the log
        earlier, and new events then take the lost numbers: comparing the event
        itself, not only the log's length, also sees a log that has grown past
        the old end again by the time we look. The feed's last event covers
        this replica's own revocations, published before the follower reads them.
        """
        seq = self._feed.last_seq
        if seq == 0:
            return
        known = self._feed.published(seq) or (self._last if self._last and self._last.seq == seq else None)
        now = await self._event_at(seq)
        # Events are never deleted, so a missing one was lost; with nothing to compare
        # (just started), that is all there is to check.
        if now is None or (known is not None and now != known):
            await asyncio.sleep(CONFIRM_AFTER)
            now = await self._event_at(seq)
            if now is None or (known is not None and now != known):
                raise EventLogRewritten(
                    f"the shared event log no longer holds event {seq} as this server sent it out: the "
                    "database was restored or failed over and lost events. Stopping: start every replica "
                    "again, then repeat the revocations made after the restore point"
                )
        self._last = now

    async def _event_at(self, seq: int) -> RevocationEvent | None:
        page = await self._store.events_after(seq - 1, 1)
        return page[0] if page and page[0].seq == seq else None

    async def catch_up(self) -> int:
        """Applies every event after the last one applied; returns how many were new here."""
        applied = 0
        async with self._reading:
            while page := await self._store.events_after(self._applied, _PAGE):
                for event in page:
                    if not self._feed.has_published(event.seq):
                        self._apply(event)
                        applied += 1
                    self._applied = event.seq
        return applied

    async def catch_up_to(self, seq: int) -> None:
        """Reads the log until every event up to seq is applied here (no read if it already is)."""
        if self._applied < seq:
            await self.catch_up()
