"""The Watch stream: replay from a sequence number, then live events, with no gap and no duplicate.

Ordering rules, in one place:

1. Subscribe to the live feed *before* reading the log, so nothing committed
   during the replay is missed.
2. Replay every event after ``after_seq`` from the log, in pages, until the
   log has nothing newer.
3. Then take live events; skip any at or below the stream's position (the
   last event it sent or passed over); if one jumps ahead, backfill the gap
   from the log first.
4. Once the replay is done, and then with nothing to send for one heartbeat
   interval, send a heartbeat with the stream's position (the feed's ticks queue it, behind every event it
   covers): every event up to it was sent or is not for this caller, so the
   caller resumes after it.
5. A subscriber that overflowed its bounded buffer is dropped from the feed
   at once; its stream is then told where to resume and ends
   (RESOURCE_EXHAUSTED).
6. An event that revokes the caller itself is sent, then the stream ends
   (UNAUTHENTICATED, revoked).
7. A key event (one with a key name: "key", "rotate") goes only to a caller
   that held a grant on the key, as agent:NAME or through one of its
   certificate's groups, when the event committed (its recorded grantees),
   in the replay and live alike; the stream's position still moves past the
   ones it withholds. Certificate and agent revocations go to every caller,
   as on a CRL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from kms.errors import InvalidArgument, ResourceExhausted, Revoked, StoreDown
from kms.revocation import HOLD
from server.endpoints.authn import Caller
from server.revocation.feed import Heartbeat, RevocationFeed
from server.store import RevocationEvent, Store

__all__ = ["Heartbeat", "Resume", "WatchItem", "WatchService", "grants_of", "revokes", "visible"]

logger = logging.getLogger(__name__)

_PAGE = 500
# Cut off from the shared store for longer than this, a Watch stream ends.
CUT_OFF_LIMIT = 10.0


@dataclass(frozen=True)
class Resume:
    after_seq: int


WatchItem = RevocationEvent | Heartbeat | Resume


def revokes(event: RevocationEvent, caller: Caller) -> bool:
    """Whether event revokes the caller's own certificate."""
    return event.kind in ("cert", "agent") and caller.serial in event.serials()


def grants_of(caller: Caller) -> frozenset[str]:
    """Every grantee the caller answers to: agent:NAME and group:G for each group of its certificate."""
    return frozenset({f"agent:{caller.name}", *(f"group:{g}" for g in caller.groups)})


def visible(event: RevocationEvent, grants: frozenset[str]) -> bool:
    """Whether a watcher holding grants may see event (rule 7).

    Any event that names a key is a key event, whatever its kind, and a key
    event without recorded grantees goes to no one: a new kind of key event
    fails closed rather than leak key names.
    """
    if event.key_name is None:
        return True
    return event.grantees is not None and not grants.isdisjoint(event.grantees)


class WatchService:
    def __init__(
        self,
        store: Store,
        feed: RevocationFeed,
        heartbeat: float,
        buffer: int,
        cut_off_for: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._store = store
        self._feed = feed
        self._heartbeat = heartbeat
        self._buffer = buffer
        # How long this server has not heard the shared store (replicas): its
        # heartbeats would then claim a currency it no longer has.
        self._cut_off_for = cut_off_for
        self._ticker: asyncio.Task[None] | None = None

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat / 2)
            try:
                self._feed.tick()
            except Exception:  # never let one bad tick end every stream's heartbeats
                logger.exception("heartbeat tick failed")

    def close(self) -> None:
        """Stops the heartbeat ticker; call it once the server's streams have ended."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def stream(self, caller: Caller, after_seq: int) -> AsyncIterator[WatchItem]:
        if after_seq < 0:
            raise InvalidArgument("after_seq must be 0 or a sequence number this server gave")
        if self._ticker is None or self._ticker.done():  # one timer for every stream's heartbeats
            self._ticker = asyncio.create_task(self._tick_forever())
        grants = grants_of(caller)
        sub = self._feed.subscribe(self._buffer, wants=lambda event: visible(event, grants))
        self._feed.watching(+1)
        try:
            last = await self._store.last_seq()
            if after_seq > last:
                raise InvalidArgument(
                    f"after_seq {after_seq} is ahead of this server's log (at {last}): resume from 0 or a seen number"
                )
            # The last event sent, or passed over as not for this caller (rule 7).
            position = after_seq
            async for event in self._backfill(position, None):
                position = event.seq
                if visible(event, grants):
                    yield event
                    self._end_if_revoked(event, caller)
            # Caught up: say so at once (rule 4's heartbeat, early), so the caller knows the
            # stream is live without waiting a heartbeat interval.
            yield self._live_heartbeat(position)
            while True:
                if sub.overflowed:
                    yield Resume(position)
                    raise ResourceExhausted(f"this watcher fell behind: resume after sequence {position}")
                live = await sub.queue.get()
                if isinstance(live, Heartbeat):
                    # Everything queued before it has been dealt with: the position covers it
                    # (and never claims more than this stream has seen).
                    yield self._live_heartbeat(position)
                    continue
                if live.seq <= position:
                    continue
                # In order (the usual case) the live event goes straight out;
                # after a jump, the log fills the gap first.
                catch_up = (
                    [live]
                    if live.seq == position + 1
                    else [e async for e in self._backfill(position, live.seq)]
                )
                for event in catch_up:
                    position = event.seq
                    if not visible(event, grants):
                        continue
                    self._feed.delivered(event)
                    yield event
                    self._end_if_revoked(event, caller)
        finally:
            self._feed.unsubscribe(sub)
            self._feed.watching(-1)

    def _live_heartbeat(self, position: int) -> Heartbeat:
        if self._cut_off_for() > CUT_OFF_LIMIT:
            # Revocations made through other replicas cannot reach us: send the agent
            # elsewhere rather than reassure it with heartbeats.
            raise StoreDown(
                "the database is not reachable from this kms-server, so this replica hears no revocations: "
                f"resume after sequence {position} on another one"
            )
        return Heartbeat(position)

    async def _backfill(self, after: int, upto: int | None) -> AsyncIterator[RevocationEvent]:
        """Events in (after, upto] from the log (to its end when upto is None)."""
        while upto is None or after < upto:
            page = await self._store.events_after(after, _PAGE)
            if not page:
                return
            for event in page:
                if upto is not None and event.seq > upto:
                    return
                yield event
                after = event.seq

    @staticmethod
    def _end_if_revoked(event: RevocationEvent, caller: Caller) -> None:
        # Not for a hold: one in the backlog was released (the caller authenticated), and
        # a live one closes the stream through the StreamGuard, with the Held error.
        if revokes(event, caller) and event.reason != HOLD:
            raise Revoked(f"this agent's certificate {caller.serial} was revoked ({event.reason})")
