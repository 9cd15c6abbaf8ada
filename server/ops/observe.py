"""What `kms-server top` shows, one screen at a time: the domain side of the Monitor service.

The client says which window it shows (a filter, and an offset and a limit per
pane); an Overview holds the totals and those rows only, so a view of 10,000
agents costs one pass over their names and a few dozen rows, never 10,000
rows on the wire. Agents come from the roster (server/ops/roster.py), online
from the stream guard (an open Watch, Listen or Exchange stream), last seen
from the authenticator, events from the journal (server/ops/journal.py) and
rates from the metrics (server/ops/rates.py). Keys are read from the store at
most every KEYS_EVERY seconds, or after a key event.

follow() streams Overviews: one at once, one per interval, and one soon after
each event (at most every MIN_GAP seconds, so a burst of enrollments costs a
few views, not one each).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from server.clock import Clock, now_seconds
from server.keys import KeyService
from server.ops.journal import Happening, Journal
from server.ops.rates import Rates
from server.ops.roster import Roster, newest_of
from server.revocation.feed import StreamGuard
from server.revocation.service import normalize_serial
from server.store import CertificateRecord, KeyRecord, Store, rules

__all__ = ["AgentRow", "Elsewhere", "KeyRow", "Observer", "Overview", "SoonRow", "Standing", "Window"]

KEYS_EVERY = 5.0
MIN_GAP = 0.1
_CAP = 500


@dataclass(frozen=True)
class Window:
    """What one screen shows; limits are capped at 500, the interval at least 0.2 s."""

    filter: str = ""
    agent_offset: int = 0
    agent_limit: int = 0
    key_offset: int = 0
    key_limit: int = 0
    event_limit: int = 0
    soon_limit: int = 0
    interval: float = 1.0

    def capped(self) -> Window:
        def cap(n: int) -> int:
            return max(0, min(n, _CAP))

        return Window(
            self.filter[:200],
            max(0, self.agent_offset),
            cap(self.agent_limit),
            max(0, self.key_offset),
            cap(self.key_limit),
            cap(self.event_limit),
            cap(self.soon_limit),
            max(0.2, self.interval),
        )


@dataclass(frozen=True)
class AgentRow:
    name: str
    open_streams: int
    last_seen: int
    serial: str
    not_after: int
    status: str


@dataclass(frozen=True)
class KeyRow:
    name: str
    key_type: str
    current_version: int
    disabled: bool
    expires_at: int
    rotation_due_at: int


@dataclass(frozen=True)
class SoonRow:
    what: str
    name: str
    at: int


@dataclass(frozen=True)
class Overview:
    now: int
    agents_total: int
    agents_matching: int
    agents_online: int
    agents: tuple[AgentRow, ...]
    keys_total: int
    keys_matching: int
    keys: tuple[KeyRow, ...]
    soon: tuple[SoonRow, ...]
    events: tuple[Happening, ...]
    rpc_rate: tuple[float, ...]
    release_rate: tuple[float, ...]
    enrollment_rate: tuple[float, ...]


@dataclass(frozen=True)
class Standing:
    """One agent as a revocation would find it (what a confirmation says will happen)."""

    agent: str
    groups: tuple[str, ...]
    valid_certificates: int
    serial_valid: bool
    open_streams: int
    serial_open_streams: int
    newest_serial: str
    newest_status: str
    newest_not_after: int
    renewed_valid: int = (
        0  # asked by serial: valid certificates renewed from it (keyCompromise takes them too)
    )
    renewed_open_streams: int = 0


@dataclass(frozen=True)
class Elsewhere:
    """The other workers' part of a view (server/workers/figures.py): their running totals
    (RPCs, key releases, enrollments, summed) and when each agent shown last called one of them."""

    totals: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seen: dict[str, int] = field(default_factory=dict)


def _key_row(k: KeyRecord) -> KeyRow:
    return KeyRow(
        k.name,
        k.key_type,
        k.current_version,
        k.disabled_at is not None,
        k.expires_at or 0,
        k.rotation_due_at or 0,
    )


def _key_soon(keys: Sequence[KeyRecord], now: int) -> list[SoonRow]:
    soon = [SoonRow("key expires", k.name, k.expires_at) for k in keys if k.expires_at and k.expires_at > now]
    soon += [SoonRow("key rotates", k.name, k.rotation_due_at) for k in keys if k.rotation_due_at]
    return soon


class Observer:
    def __init__(
        self,
        store: Store,
        roster: Roster,
        journal: Journal,
        keys: KeyService,
        guard: StreamGuard,
        rates: Rates,
        clock: Clock,
        last_seen: Callable[[str], int],
    ) -> None:
        self._store = store
        self._roster = roster
        self._journal = journal
        self._keys = keys
        self._guard = guard
        self._rates = rates
        self._clock = clock
        self._last_seen = last_seen
        self._key_list: list[KeyRecord] = []
        self._keys_read: tuple[float, int] = (-float("inf"), -1)  # (monotonic, journal.key_changes)
        # Of several workers: asks the others for their part of a view (the agents shown); None: one process.
        self.elsewhere: Callable[[Sequence[str]], Awaitable[Elsewhere]] | None = None

    def here(self, names: Sequence[str]) -> Elsewhere:
        """This worker's part of another worker's view: its totals, and when names last called here."""
        return Elsewhere(self._rates.totals(), {n: seen for n in names if (seen := self._last_seen(n))})

    def issued_elsewhere(self, cert: CertificateRecord) -> None:
        """Another worker issued cert: the roster and the journal show it as if issued here."""
        self._roster.issued(cert)
        self._journal.issued(cert)

    async def _key_records(self) -> list[KeyRecord]:
        read_at, changes = self._keys_read
        if time.monotonic() - read_at >= KEYS_EVERY or changes != self._journal.key_changes:
            changes = self._journal.key_changes  # before the read: a change during it reads again
            self._key_list = sorted(await self._keys.list(), key=lambda k: k.name)
            self._keys_read = (time.monotonic(), changes)
        return self._key_list

    def _agent_rows(self, names: Sequence[str], now: int, elsewhere: Elsewhere) -> tuple[AgentRow, ...]:
        rows = []
        for name in names:
            newest = self._roster.newest(name)
            if newest is None:
                continue
            seen = max(self._last_seen(name), elsewhere.seen.get(name, 0), newest.issued_at)
            status = self._roster.status(newest, now)
            streams = self._guard.open_streams(name)
            rows.append(AgentRow(name, streams, seen, newest.serial, newest.not_after, status))
        return tuple(rows)

    async def overview(self, window: Window) -> Overview:
        """Totals, and the rows of window (capped first)."""
        w = window.capped()
        await self._roster.fresh()
        keys = await self._key_records()
        now = now_seconds(self._clock)
        matching, names = self._roster.window(w.filter, w.agent_offset, w.agent_limit)
        elsewhere = Elsewhere() if self.elsewhere is None else await self.elsewhere(names)
        self._rates.sample(time.monotonic(), elsewhere.totals)
        shown_keys = [k for k in keys if w.filter in k.name] if w.filter else keys
        soon = [
            SoonRow("certificate expires", name, at) for at, name in self._roster.ending(now, w.soon_limit)
        ]
        soon = sorted(soon + _key_soon(keys, now), key=lambda s: (s.at, s.name))[: w.soon_limit]
        return Overview(
            now=now,
            agents_total=len(self._roster),
            agents_matching=matching,
            agents_online=self._guard.agents_online,
            agents=self._agent_rows(names, now, elsewhere),
            keys_total=len(keys),
            keys_matching=len(shown_keys),
            keys=tuple(_key_row(k) for k in shown_keys[w.key_offset : w.key_offset + w.key_limit]),
            soon=tuple(soon),
            events=tuple(self._journal.recent(w.event_limit)),
            rpc_rate=tuple(self._rates.rpcs),
            release_rate=tuple(self._rates.releases),
            enrollment_rate=tuple(self._rates.enrollments),
        )

    async def follow(self, windows: AsyncIterator[Window]) -> AsyncIterator[Overview]:
        """An Overview of the newest window at once, then each interval, at once after a new
        window and soon after each event. Ends when the client closes its side before any window."""
        events, changed = self._journal.listen(), asyncio.Event()
        latest: list[Window] = []

        async def read() -> None:
            try:
                async for window in windows:
                    latest[:] = [window.capped()]
                    changed.set()
            finally:
                changed.set()  # a bad message ends the stream at once (checked below)

        reader = asyncio.create_task(read())
        try:
            first = asyncio.create_task(changed.wait())
            await asyncio.wait((reader, first), return_when=asyncio.FIRST_COMPLETED)
            first.cancel()
            if not latest:
                reader.result()  # the client's error, if any
                return
            while True:
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    reader.result()  # the client sent something undecodable: INVALID_ARGUMENT
                changed.clear()
                yield await self.overview(latest[0])
                await _woken(events, changed, latest[0].interval)
        finally:
            reader.cancel()
            self._journal.unlisten(events)

    async def standing(self, name: str, serial: str) -> Standing:
        """Raises NotFound for an agent (or a serial) this server does not know."""
        if serial:
            serial = normalize_serial(serial)  # as revoke takes it: 0x, colons, leading zeros
            owner = await self._store.get_agent_by_serial(serial)
            if owner is None:
                raise rules.no_certificate(serial)
            name = owner.name
        agent = await self._store.get_agent(name)
        if agent is None:
            raise rules.no_agent(name)
        now = now_seconds(self._clock)
        valid = [s for s in await self._store.unrevoked_serials(name, now) if self._roster.revoked(s) is None]
        newest = agent.latest
        renewed = [s for s in await self._store.renewed_from(serial) if s in valid] if serial else []
        return Standing(
            agent=name,
            groups=agent.groups,
            valid_certificates=len(valid),
            serial_valid=serial in valid,
            open_streams=self._guard.open_streams(name),
            serial_open_streams=self._guard.serial_streams(serial) if serial else 0,
            renewed_valid=len(renewed),
            renewed_open_streams=sum(self._guard.serial_streams(s) for s in renewed),
            newest_serial=newest.serial,
            newest_status=self._roster.status(newest_of(newest), now),
            newest_not_after=newest.not_after,
        )


async def _woken(events: asyncio.Event, changed: asyncio.Event, interval: float) -> None:
    """Returns after interval, at once on a new window, or MIN_GAP after an event (one view a burst)."""
    waits = [asyncio.create_task(events.wait()), asyncio.create_task(changed.wait())]
    try:
        await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    if events.is_set() and not changed.is_set():
        await asyncio.sleep(MIN_GAP)
    events.clear()
