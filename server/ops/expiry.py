"""Which agents' newest certificates expire soon: the kms_certificates_expiring gauges, at O(log n) a scrape.

A scrape used to list every agent (50 ms with 6,000 of them, on the event
loop every agent's calls share). Now the index is read once at start and
kept as things change here: a certificate issued (enrollment, renewal) and a
revocation (local, or another replica's, as the feed publishes it). Expiry
needs no update: a scrape counts the end times in (now, now + window] of a
sorted list. Other replicas' issuance is not seen as it happens, so a scrape
finding the index older than ``resync_every`` starts a full re-read in the
background (the scrape itself never waits for the store); changes made
while it reads are applied again on top of what it read.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable

from server.clock import Clock, now_seconds
from server.store import CertificateRecord, RevocationEvent, Store

__all__ = ["RESYNC_EVERY", "WINDOWS", "ExpiringCertificates"]

logger = logging.getLogger(__name__)

# The gauge's label and its window in seconds.
WINDOWS = (("24h", 86400), ("7d", 7 * 86400))
# At most one full re-read of the agents per this many seconds (only while /metrics is scraped).
RESYNC_EVERY = 60.0


class ExpiringCertificates:
    """Each agent's newest certificate while it is not revoked, with its end times in order."""

    def __init__(self, store: Store, clock: Clock, resync_every: float = RESYNC_EVERY) -> None:
        self._store = store
        self._clock = clock
        self._resync_every = resync_every
        self._latest: dict[str, tuple[str, int]] = {}  # agent -> (serial, not_after)
        self._ends: list[int] = []  # not_after of every entry of _latest, sorted
        self._tried_at = -float("inf")  # monotonic time of the last (re-)read begun
        self._resync: asyncio.Task[None] | None = None
        # While a re-read is under way: the changes made meanwhile, to apply again after it.
        self._during: list[Callable[[], None]] | None = None

    def __len__(self) -> int:
        return len(self._latest)

    async def load(self) -> None:
        """Reads every agent's newest certificate from the store (at start, and to resync)."""
        self._tried_at = time.monotonic()
        if self._during is None:  # (refresh() starts collecting when it schedules the re-read)
            self._during = []
        try:
            agents = await self._store.list_agents()
            self._latest = {
                a.name: (a.latest.serial, a.latest.not_after) for a in agents if a.latest.revoked_at is None
            }
            self._ends = sorted(end for _, end in self._latest.values())
            for change in self._during:
                change()
        finally:
            self._during = None

    def count(self, within: int) -> int:
        """Valid newest certificates whose end is in (now, now + within]."""
        now = now_seconds(self._clock)
        return bisect.bisect_right(self._ends, now + within) - bisect.bisect_right(self._ends, now)

    def issued(self, cert: CertificateRecord) -> None:
        """A certificate was issued (enrollment or renewal): it is its agent's newest now."""
        self._apply(lambda: self._set(cert.agent_name, (cert.serial, cert.not_after)))

    def published(self, event: RevocationEvent) -> None:
        """An event went out on the feed: one that revokes an agent's newest certificate drops the agent.

        By serial, for agent revocations too (they list every serial they revoke):
        a certificate issued after the event, as when an enrollment replaces an
        agent's certificates, stays.
        """
        if event.kind == "release":
            # A released certificate counts again: which one is its agent's newest, the next
            # scrape's re-read says (a release is rare; the gauges need not be exact meanwhile).
            self._tried_at = -float("inf")
            return
        if event.kind not in ("cert", "agent") or event.agent_name is None:
            return
        name, serials = event.agent_name, set(event.serials())

        def drop() -> None:
            entry = self._latest.get(name)
            if entry is not None and entry[0] in serials:
                self._set(name, None)

        self._apply(drop)

    def refresh(self) -> None:
        """Called per scrape: starts a background re-read when the last one began over resync_every ago
        (a failed one too: a store that is down is asked again no more often)."""
        stale = time.monotonic() - self._tried_at > self._resync_every
        if stale and (self._resync is None or self._resync.done()):
            self._tried_at = time.monotonic()
            self._during = []  # from now: the task may start reading only after later changes
            self._resync = asyncio.create_task(self._resync_quietly())

    async def _resync_quietly(self) -> None:
        try:
            await self.load()
        except Exception as exc:  # the gauges keep their last values; the next scrape tries again
            logger.warning("could not re-read agents for the expiry gauges: %s", type(exc).__name__)

    def _apply(self, change: Callable[[], None]) -> None:
        change()
        if self._during is not None:
            self._during.append(change)

    def _set(self, name: str, entry: tuple[str, int] | None) -> None:
        old = self._latest.pop(name, None)
        if old is not None:
            del self._ends[bisect.bisect_left(self._ends, old[1])]
        if entry is not None:
            self._latest[name] = entry
            bisect.insort(self._ends, entry[1])
