"""What the workers share: one budget per client and agent, and the whole server's open counts.

With ``--workers N`` every limit stays per client or agent, as in one process
(issue 20), and no valid caller ever waits on another worker for it:

- Token buckets (failed enrollments and refused tokens per peer address, key
  exchanges per agent: server/endpoints/limits.py RateLimiter). Each worker
  notes what it took to the others (one cast per loop turn, the counts by
  key), and each applies the others' takes to its own buckets
  (``RateLimiter.consume``). Every worker thus holds the sum of every
  worker's consumption, refilled at the one rate.
- Caps (open streams per agent, server/revocation/feed.py StreamGuard; open
  anonymous connections per address, server/endpoints/gate.py). Each worker
  notes its own open counts of the keys that changed (absolute counts, once per
  loop turn) and keeps the others' in a Tally: a cap compares this worker's
  count plus the others'.

The slack is what is in flight: takes and opens made within one loop turn and
the hub's relay (a millisecond or so) on other workers are not yet counted
here. In that window each worker may allow at most what it would alone, so a
budget or cap can be exceeded by at most (N - 1) x what arrives in that window;
it is never refused for what did not happen. A worker that dies: the hub casts
``gone`` and the others drop its open counts (its takes stay spent). A worker
that (re)joins casts ``sync``: every other worker answers it alone with all its
open counts and its depleted buckets (on the same socket as its later notes, so
no later note is overtaken), and the joiner lowers its buckets to theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from server.endpoints.limits import RateLimiter
from server.workers.hub import WORKER_JOINED, WORKER_LEFT
from server.workers.link import WorkerLink
from server.workers.protocol import Message

if TYPE_CHECKING:
    from server.app import App

__all__ = ["NOTE_KEYS", "SYNC_BUCKETS", "share_limits"]

# Keys per note: a frame stays far below protocol.MAX_FRAME however many changed in one turn.
NOTE_KEYS = 2000
# Depleted buckets a worker hands one that joins (the lowest first).
SYNC_BUCKETS = 5000


def _chunks(counts: dict[str, Any]) -> Iterator[dict[str, Any]]:
    items = list(counts.items())
    for start in range(0, len(items), NOTE_KEYS):
        yield dict(items[start : start + NOTE_KEYS])


class _Batch:
    """Keys noted during one loop turn, handed to send once the turn ends."""

    def __init__(self, send: Callable[[dict[str, int]], None]) -> None:
        self._send = send
        self._keys: dict[str, int] = {}

    def note(self, key: str, count: int = 1) -> None:
        if not self._keys:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no loop: the worker is stopping, and the hub casts WORKER_LEFT for it
                return
        self._keys[key] = self._keys.get(key, 0) + count

    def _flush(self) -> None:
        keys, self._keys = self._keys, {}
        if keys:
            self._send(keys)


class SharedLimits:
    """One worker's part: notes what it takes and holds open, applies what the others note."""

    def __init__(self, app: App, link: WorkerLink) -> None:
        s = app.services
        self._link = link
        self._guard = s.guard
        self._gate = app.listeners.enroll.gate
        self._buckets: dict[str, RateLimiter] = {
            "enroll": s.limits.enrollments,
            "auth": s.limits.auth_failures,
            "exchange": s.exchanges.limiter,
        }
        self._taken = {name: self._batch_of(name) for name in self._buckets}
        self._streams = _Batch(self._note_streams)
        self._holders = _Batch(self._note_holders)

    def _batch_of(self, name: str) -> _Batch:
        return _Batch(lambda keys: self._cast_chunks("taken", "keys", keys, bucket=name))

    def start(self) -> None:
        """Hooks in before the worker serves; asks the others for what they hold already."""
        for name, limiter in self._buckets.items():
            limiter.on_take = self._taken[name].note
        self._guard.changed = self._stream_changed
        self._gate.changed = self._holders.note
        link = self._link
        link.on_cast("taken", self._on_taken)
        link.on_cast("streams", self._on_streams)
        link.on_cast("holders", self._on_holders)
        link.on_cast("sync", self._on_sync)
        link.on_cast("full", self._on_full)
        link.on_cast(WORKER_LEFT, self._on_gone)
        # A worker started again holds nothing open yet, whatever a late note of its last life said.
        link.on_cast(WORKER_JOINED, self._on_gone)
        link.cast("sync")

    # --- this worker's notes -----------------------------------------------------------

    def _stream_changed(self, agent: str, serial: str) -> None:
        # Agents are noted by name, certificates by "#" + serial (no agent name starts with "#").
        self._streams.note(agent)
        self._streams.note("#" + serial)

    def _cast_chunks(self, topic: str, field: str, counts: dict[str, Any], **extra: Any) -> None:
        for chunk in _chunks(counts):
            self._link.cast(topic, **{field: chunk}, **extra)

    def _note_streams(self, keys: dict[str, int]) -> None:
        here = {k: self._guard.here(serial=k[1:]) if k[0] == "#" else self._guard.here(agent=k) for k in keys}
        self._cast_chunks("streams", "counts", here)

    def _note_holders(self, keys: dict[str, int]) -> None:
        held: dict[str, int] = {}
        for holder in keys:
            held.update(self._gate.held_here(holder))
        self._cast_chunks("holders", "counts", held)

    # --- the others' notes --------------------------------------------------------------

    def _on_taken(self, message: Message) -> None:
        limiter = self._buckets.get(str(message.get("bucket")))
        if limiter is not None:
            for key, count in dict(message["keys"]).items():
                limiter.consume(str(key), float(count))

    def _on_streams(self, message: Message, *, replace: bool = False) -> None:
        worker, counts = int(message["from"]), dict(message["counts"])
        agents = {k: int(n) for k, n in counts.items() if not k.startswith("#")}
        serials = {k[1:]: int(n) for k, n in counts.items() if k.startswith("#")}
        if replace:
            self._guard.elsewhere_agents.replace(worker, agents)
            self._guard.elsewhere_serials.replace(worker, serials)
        else:
            self._guard.elsewhere_agents.told(worker, agents)
            self._guard.elsewhere_serials.told(worker, serials)

    def _on_holders(self, message: Message, *, replace: bool = False) -> None:
        worker, counts = int(message["from"]), {str(k): int(n) for k, n in dict(message["counts"]).items()}
        if replace:
            self._gate.elsewhere.replace(worker, counts)
        else:
            self._gate.elsewhere.told(worker, counts)

    def _on_sync(self, message: Message) -> None:
        """A worker joined: it gets all this one holds, then (on the same socket) the later notes."""
        joiner = int(message["from"])
        agents, serials = self._guard.held_here()
        streams = {**agents, **{"#" + serial: n for serial, n in serials.items()}}
        levels = {name: limiter.depleted(SYNC_BUCKETS) for name, limiter in self._buckets.items()}
        self._link.send_to(joiner, "full", levels=levels)
        for topic, counts in (("streams", streams), ("holders", self._gate.held_here())):
            chunks = list(_chunks(counts)) or [{}]
            self._link.send_to(joiner, "full", part=topic, counts=chunks[0])
            for chunk in chunks[1:]:
                self._link.send_to(joiner, topic, counts=chunk)

    def _on_full(self, message: Message) -> None:
        part = message.get("part")
        if part == "streams":
            self._on_streams(message, replace=True)
        elif part == "holders":
            self._on_holders(message, replace=True)
        else:
            for name, levels in dict(message.get("levels") or {}).items():
                if (limiter := self._buckets.get(name)) is not None:
                    for key, level in levels:
                        limiter.at_most(str(key), float(level))

    def _on_gone(self, message: Message) -> None:
        worker = int(message["from"])
        self._guard.elsewhere_agents.drop(worker)
        self._guard.elsewhere_serials.drop(worker)
        self._gate.elsewhere.drop(worker)


def share_limits(app: App, link: WorkerLink) -> SharedLimits:
    """Makes app's limits and open counts the whole server's (call once connected, before serving)."""
    shared = SharedLimits(app, link)
    shared.start()
    return shared
