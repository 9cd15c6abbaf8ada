"""In-process fan-out of revocation events to watch streams, and closing revoked streams.

Both sit behind small interfaces so that replicas can later share them
through the database's notification channel; the event log in the store
stays the truth (a subscriber that misses something backfills from it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from kms.errors import Revoked
from server.ops.metrics import Metrics
from server.revocation.states import REVOCATION_KINDS
from server.store import RevocationEvent, rules
from server.workers.tally import Tally

__all__ = ["GuardedStream", "Heartbeat", "RevocationFeed", "StreamGuard", "Subscription"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    """Nothing happened: every event up to current_seq was queued before this."""

    current_seq: int


class Subscription:
    def __init__(self, maxsize: int, wants: Callable[[RevocationEvent], bool] | None = None) -> None:
        self.queue: asyncio.Queue[RevocationEvent | Heartbeat] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.quiet = 0  # heartbeat ticks since this subscriber was last sent anything
        # Which events its stream sends on (the others it only passes over): only
        # those count as something sent, for the heartbeat's quiet count.
        self.wants = wants


class RevocationFeed:
    """Publishes committed events to every subscriber without ever blocking on one."""

    def __init__(
        self,
        last_seq: int,
        metrics: Metrics | None = None,
        on_publish: Callable[[RevocationEvent], None] | None = None,
    ) -> None:
        self.last_seq = last_seq
        self._subs: set[Subscription] = set()
        self._metrics = metrics
        # Told of each event as it goes out (local or another replica's): the expiry gauges.
        self._on_publish = on_publish
        # Each recent event, and when it was published (for the delivery-lag metric).
        self._published: OrderedDict[int, tuple[RevocationEvent, float]] = OrderedDict()

    def subscribe(self, maxsize: int, wants: Callable[[RevocationEvent], bool] | None = None) -> Subscription:
        """A new subscriber; it is queued every event (its stream tracks its position by
        them), and wants says which of them it sends on (None: all)."""
        sub = Subscription(maxsize, wants)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def delivered(self, event: RevocationEvent) -> None:
        """A stream sent a live event: record how long after publication."""
        published = self._published.get(event.seq)
        if self._metrics is not None and published is not None:
            self._metrics.watch_lag.observe(time.monotonic() - published[1])

    def watching(self, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.watchers.inc(delta)

    def has_published(self, seq: int) -> bool:
        """Whether event seq went out on this feed recently (the last 10,000 events)."""
        return seq in self._published

    def published(self, seq: int) -> RevocationEvent | None:
        """The event seq this feed sent out, if it is one of the last 10,000."""
        entry = self._published.get(seq)
        return None if entry is None else entry[0]

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, event: RevocationEvent) -> bool:
        """Sends event to every subscriber; False (and nothing sent) if it already went out."""
        if event.seq in self._published:
            return False
        self.last_seq = max(self.last_seq, event.seq)
        self._published[event.seq] = (event, time.monotonic())
        if len(self._published) > 10_000:
            self._published.popitem(last=False)
        if self._metrics is not None and event.kind in REVOCATION_KINDS:  # not rotations, disables, releases
            self._metrics.revocations.labels(event.kind).inc()
        if self._on_publish is not None:
            self._on_publish(event)
        for sub in list(self._subs):
            if sub.wants is None or sub.wants(event):
                sub.quiet = 0
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                # Bounded memory: drop this subscriber, never wait for it. Its
                # stream holds at most one flow-control window; when (if) the
                # client reads again it is told where to resume, and the stream
                # ends. A client that never reads is cut off by keepalive.
                self._subs.discard(sub)
                sub.overflowed = True
                logger.warning("dropped a watcher that fell behind", extra={"seq": event.seq})
        return True

    def tick(self) -> None:
        """Half a heartbeat interval passed: a subscriber sent nothing for two ticks gets a heartbeat.

        One timer for every stream, instead of a timeout armed and cancelled
        by each stream on each event (about 12 us per stream message). A quiet
        stream hears a heartbeat once per interval; after an event, the first
        comes between half an interval and one interval later.
        """
        beat = Heartbeat(self.last_seq)
        for sub in list(self._subs):
            sub.quiet += 1
            # Only to an empty queue: a subscriber with messages to read needs no
            # heartbeat, and one that stopped reading must not fill up on them. One
            # whose queue holds only events it passes over is tried again next tick.
            if sub.quiet >= 2 and sub.queue.empty():
                sub.quiet = 0
                sub.queue.put_nowait(beat)


# How long a revoked stream may stay inside one send before its task is cancelled regardless.
_STUCK_SEND = 1.0


class GuardedStream:
    """One open stream of an identity, which a revocation closes with UNAUTHENTICATED.

    Cancelling the stream's task is not enough by itself: grpc.aio ends a
    cancelled handler without sending any status, and the client's stream
    then stays open until the client gives up (the Listen streams of revoked
    agents stayed open for minutes). So the task is cancelled only while it
    waits in our own code, where the stream wrapper (server/endpoints/chain.py) turns
    the cancellation into an UNAUTHENTICATED status; while gRPC is sending a
    message for it, the wrapper checks ``reason`` as soon as the send is done.
    """

    def __init__(self, task: asyncio.Task[object], serial: str, agent: str) -> None:
        self.task = task
        self.serial = serial
        self.agent = agent
        self.reason: str | None = None  # the revocation's reason, once one covers this stream
        self.sending = False  # control is in gRPC, sending a message of this stream

    def revoke(self, reason: str) -> None:
        if self.reason is not None or self.task.done():
            return
        self.reason = reason
        if not self.sending:
            self.task.cancel()
        else:
            # A client that stopped reading can hold a send for ever: end the task all the
            # same after a while (no status can reach such a client before its data anyway).
            asyncio.get_running_loop().call_later(_STUCK_SEND, self._force)

    def _force(self) -> None:
        if not self.task.done():
            self.task.cancel()

    def error(self) -> Revoked:
        """What the client is told: what its next call would be told."""
        return rules.caller_revoked(self.serial, self.reason or "unspecified")


class StreamGuard:
    """Knows which open streams belong to which certificate and agent, to close revoked ones.

    The counts (open_streams, serial_streams, agents_online) are the whole
    server's: of several workers, the others' as they last noted them
    (``elsewhere_*``, kept by server/workers/shared.py, told through ``changed``).
    """

    def __init__(self) -> None:
        self._by_serial: dict[str, set[GuardedStream]] = defaultdict(set)
        self._by_agent: dict[str, set[GuardedStream]] = defaultdict(set)
        self.elsewhere_agents, self.elsewhere_serials = Tally(), Tally()
        self.changed: Callable[[str, str], None] | None = None  # (agent, serial) opened or closed one

    def register(self, stream: GuardedStream) -> None:
        self._by_serial[stream.serial].add(stream)
        self._by_agent[stream.agent].add(stream)
        if self.changed is not None:
            self.changed(stream.agent, stream.serial)

    def unregister(self, stream: GuardedStream) -> None:
        serial, agent = stream.serial, stream.agent
        self._by_serial[serial].discard(stream)
        self._by_agent[agent].discard(stream)
        if not self._by_serial[serial]:
            del self._by_serial[serial]
        if not self._by_agent[agent]:
            del self._by_agent[agent]
        if self.changed is not None:
            self.changed(agent, serial)

    def here(self, agent: str = "", serial: str = "") -> int:
        """The open streams on this worker of agent (or of serial)."""
        return len(self._by_agent.get(agent, ()) if agent else self._by_serial.get(serial, ()))

    def held_here(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every open count on this worker: by agent, by serial."""
        return {a: len(s) for a, s in self._by_agent.items()}, {c: len(s) for c, s in self._by_serial.items()}

    def open_streams(self, agent: str) -> int:
        """The open streams of an agent, all its certificates together (renewing gives no more)."""
        return len(self._by_agent.get(agent, ())) + self.elsewhere_agents.count(agent)

    def serial_streams(self, serial: str) -> int:
        """The open streams of one certificate."""
        return len(self._by_serial.get(serial, ())) + self.elsewhere_serials.count(serial)

    @property
    def agents_online(self) -> int:
        """How many agents hold at least one stream open."""
        elsewhere = self.elsewhere_agents.keys()
        return len(self._by_agent.keys() | elsewhere) if elsewhere else len(self._by_agent)

    def close(self, event: RevocationEvent, grace: float) -> int:
        """Closes, after grace seconds, every stream the event revokes; returns how many."""
        streams: set[GuardedStream] = set()
        if event.kind == "agent" and event.agent_name:
            streams |= self._by_agent.get(event.agent_name, set())
        for serial in event.serials() if event.kind in ("cert", "agent") else ():
            streams |= self._by_serial.get(serial, set())
        loop = asyncio.get_running_loop()
        for stream in streams:
            # The grace lets a Watch stream deliver the event to its own agent first.
            loop.call_later(grace, stream.revoke, event.reason)
        return len(streams)
