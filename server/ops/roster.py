"""Every agent's newest certificate, in memory, in the two orders `kms-server top` reads: by name, by end.

A view of 10,000 agents must not read 10,000 rows a second. The roster reads
the agents once (at the first view, then at most every ``resync_every``
seconds, for what other replicas issued), and is told of each certificate
issued here as it commits; revocation needs no update, since an agent's
state is read from the revocation service's map (the one every call is
authenticated against) when a row is shown. A window is then one pass over
the sorted names (for the filter) and a slice; the soonest expiries are a
bisect into the ends.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.enrollment.agents import certificate_status
from server.store import AgentRecord, CertificateRecord, Store

__all__ = ["RESYNC_EVERY", "Newest", "Roster", "newest_of"]

RESYNC_EVERY = 60.0


@dataclass(frozen=True)
class Newest:
    """An agent's newest certificate."""

    serial: str
    not_before: int
    not_after: int
    issued_at: int


class Roster:
    def __init__(
        self,
        store: Store,
        revocation_reason: Callable[[str], str | None],
        resync_every: float = RESYNC_EVERY,
    ) -> None:
        self._store = store
        self._revocation_reason = revocation_reason
        self._resync_every = resync_every
        self._newest: dict[str, Newest] = {}
        self._names: list[str] = []  # sorted
        self._ends: list[tuple[int, str]] = []  # (not_after, name), sorted
        self._read_at = -float("inf")  # monotonic
        self._lock = asyncio.Lock()
        # While a read is under way: certificates issued meanwhile, applied again after it.
        self._during: list[CertificateRecord] | None = None

    def __len__(self) -> int:
        return len(self._names)

    async def fresh(self) -> None:
        """Reads the agents again if the last read is older than resync_every (or none was made)."""
        if time.monotonic() - self._read_at < self._resync_every:
            return
        async with self._lock:
            if time.monotonic() - self._read_at < self._resync_every:
                return
            self._during = []
            try:
                agents = await self._store.list_agents()
                # Sorting 10,000 agents takes tens of milliseconds: off the loop, which serves every RPC.
                self._newest, self._names, self._ends = await asyncio.to_thread(_orders, agents)
                for cert in self._during:
                    self._set(cert)
            finally:
                self._during = None
            self._read_at = time.monotonic()

    def issued(self, cert: CertificateRecord) -> None:
        """A certificate was issued here: it is its agent's newest."""
        if self._during is not None:
            self._during.append(cert)
        self._set(cert)

    def _set(self, cert: CertificateRecord) -> None:
        name, old = cert.agent_name, self._newest.get(cert.agent_name)
        if old is None:
            bisect.insort(self._names, name)
        else:
            at = bisect.bisect_left(self._ends, (old.not_after, name))
            if at < len(self._ends) and self._ends[at] == (old.not_after, name):
                del self._ends[at]
        self._newest[name] = newest_of(cert)
        bisect.insort(self._ends, (cert.not_after, name))

    def newest(self, name: str) -> Newest | None:
        return self._newest.get(name)

    def revoked(self, serial: str) -> str | None:
        """The reason serial is revoked (or held), None while it is not."""
        return self._revocation_reason(serial)

    def status(self, newest: Newest, now: int) -> str:
        """As the next call of that certificate would find it (server/enrollment/agents.py's words)."""
        return certificate_status(
            self._revocation_reason(newest.serial), newest.not_before, newest.not_after, now
        )

    def window(self, text: str, offset: int, limit: int) -> tuple[int, list[str]]:
        """How many names contain text, and those from offset, at most limit of them, in order."""
        names = [n for n in self._names if text in n] if text else self._names
        return len(names), names[offset : offset + limit]

    def ending(self, now: int, limit: int) -> list[tuple[int, str]]:
        """The soonest (not_after, name) of valid newest certificates still in force at now."""
        found: list[tuple[int, str]] = []
        start = bisect.bisect_right(self._ends, (now, "\U0010ffff"))
        # Revoked agents are skipped, however many end first (a pass over the ends at worst).
        for not_after, name in itertools.islice(self._ends, start, None):
            if len(found) >= limit:
                break
            if self.status(self._newest[name], now) == "valid":
                found.append((not_after, name))
        return found


def _orders(agents: list[AgentRecord]) -> tuple[dict[str, Newest], list[str], list[tuple[int, str]]]:
    """Each agent's newest certificate, the names sorted, and (end, name) sorted."""
    newest = {a.name: newest_of(a.latest) for a in agents}
    return newest, sorted(newest), sorted((n.not_after, name) for name, n in newest.items())


def newest_of(cert: CertificateRecord) -> Newest:
    return Newest(cert.serial, cert.not_before, cert.not_after, cert.issued_at)
