"""The whole server's figures on the primary: /metrics, `kms-server top` and an agent's standing.

The primary alone serves the HTTP side port and the admin socket, so it
gathers what the others know only they know, when it is asked, never on a
call's path:

- /metrics: it asks every other worker for its samples (``link.ask``, answered
  within the hub's ASK_BOUND; at most one ask a second, server/ops/metrics.py)
  and merges them with its own (server/ops/merge.py).
- `top`: for each view it asks the others, within OBSERVE_BOUND, for their
  running totals (the RPC, release and enrollment rates) and when the agents
  shown last called them;
  open streams and agents online are the StreamGuard's whole-server counts
  (server/workers/shared.py). Each certificate another worker issues is sent
  to the primary, whose roster, journal and expiry gauges take it as if issued
  there.

Sums over workers never go down: a worker's last answer stands in for one it
did not give in time, and a departed worker's last counters stay in a retained
base (server/workers/remembered.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.ops.merge import Families, families_of, folded, packed, unpacked
from server.ops.observe import Elsewhere
from server.store import CertificateRecord
from server.workers.link import WorkerLink
from server.workers.protocol import Message
from server.workers.remembered import LastAnswers

if TYPE_CHECKING:
    from server.app import App

__all__ = ["OBSERVE_BOUND", "share_figures"]

# How long a `top` view waits for the other workers' totals (a missing one's last answer stands in).
OBSERVE_BOUND = 0.2

_PRIMARY = 0
_PER_NOTE = 1000  # certificates per message: a frame stays far below protocol.MAX_FRAME
_CERT_FIELDS = ("serial", "agent_name", "not_before", "not_after", "issued_at", "token_id", "ca_generation")


def share_figures(app: App, link: WorkerLink) -> None:
    """Every worker answers for its figures; the primary asks, and hears of every certificate issued."""
    s = app.services

    async def samples(_message: Message) -> str:
        return packed(families_of(s.metrics.registry))

    async def part(message: Message) -> dict[str, Any]:
        here = s.observer.here([str(n) for n in message.get("names", [])])
        return {"totals": list(here.totals), "seen": here.seen}

    link.on_ask("metrics", samples)
    link.on_ask("observe", part)
    if not link.role.primary:
        s.enrollment.tell(_IssuedNotes(link).note)
        return

    figures = _Figures()
    samples_of = LastAnswers(link, "metrics", unpacked, figures.left_samples)
    parts_of = LastAnswers(link, "observe", _part_of, figures.left_part)

    async def others() -> list[Families]:
        answers = await samples_of.ask()
        return [figures.samples, *answers] if figures.samples else answers

    async def elsewhere(names: Sequence[str]) -> Elsewhere:
        parts = await parts_of.ask(within=OBSERVE_BOUND, names=list(names))
        # The base after the ask: a worker that left meanwhile moved its last totals there.
        totals, seen = list(figures.totals), {n: figures.seen[n] for n in names if n in figures.seen}
        for part_totals, part_seen in parts:
            totals = [t + a for t, a in zip(totals, part_totals, strict=True)]
            for name in names:
                if name in part_seen:
                    seen[name] = max(seen.get(name, 0), part_seen[name])
        return Elsewhere((totals[0], totals[1], totals[2]), seen)

    def issued(message: Message) -> None:
        for note in message["certs"]:
            cert = _cert_of(dict(note))
            s.observer.issued_elsewhere(cert)
            s.expiring.issued(cert)

    s.metrics.others = others
    s.observer.elsewhere = elsewhere
    link.on_cast("issued", issued)


_Part = tuple[tuple[float, float, float], dict[str, int]]


def _part_of(body: Any) -> _Part:
    """An "observe" answer: (running totals, when the agents asked about last called)."""
    a, b, c = (float(t) for t in body["totals"])
    return (a, b, c), {str(name): int(at) for name, at in dict(body["seen"]).items()}


@dataclass
class _Figures:
    """What departed workers counted, kept in the whole server's sums."""

    samples: Families = field(default_factory=list)  # their counters and histograms (merge.folded)
    totals: tuple[float, float, float] = (0.0, 0.0, 0.0)  # their RPCs, releases, enrollments
    seen: dict[str, int] = field(default_factory=dict)  # when agents last called them

    def left_samples(self, last: Families) -> None:
        self.samples = folded(self.samples, last)

    def left_part(self, last: _Part) -> None:
        totals, seen = last
        self.totals = (self.totals[0] + totals[0], self.totals[1] + totals[1], self.totals[2] + totals[2])
        for name, at in seen.items():
            self.seen[name] = max(self.seen.get(name, 0), at)


class _IssuedNotes:
    """The certificates this worker issued during one loop turn, sent to the primary once it ends."""

    def __init__(self, link: WorkerLink) -> None:
        self._link = link
        self._certs: list[dict[str, Any]] = []

    def note(self, cert: CertificateRecord) -> None:
        if not self._certs:
            asyncio.get_running_loop().call_soon(self._send)
        self._certs.append(_cert_note(cert))

    def _send(self) -> None:
        certs, self._certs = self._certs, []
        for start in range(0, len(certs), _PER_NOTE):
            self._link.send_to(_PRIMARY, "issued", certs=certs[start : start + _PER_NOTE])


def _cert_note(cert: CertificateRecord) -> dict[str, Any]:
    """What the primary's views need of a certificate (not its DER)."""
    return {name: getattr(cert, name) for name in _CERT_FIELDS}


def _cert_of(note: dict[str, Any]) -> CertificateRecord:
    return CertificateRecord(
        serial=str(note["serial"]),
        agent_name=str(note["agent_name"]),
        not_before=int(note["not_before"]),
        not_after=int(note["not_after"]),
        der=b"",
        issued_at=int(note["issued_at"]),
        token_id=note["token_id"],
        ca_generation=int(note["ca_generation"]),
    )
