"""The whole server's figures on the primary: /metrics, `kms-server top` and an agent's standing.

The primary alone serves the HTTP side port and the admin socket, so it
gathers what the others know only they know, when it is asked, never on a
call's path:

- /metrics: it asks every other worker for its samples (``link.ask``, answered
  within the hub's ASK_BOUND) and merges them with its own (server/ops/merge.py).
- `top`: for each view it asks the others for their running totals (the RPC,
  release and enrollment rates) and when the agents shown last called them;
  open streams and agents online are the StreamGuard's whole-server counts
  (server/workers/shared.py). Each certificate another worker issues is sent
  to the primary, whose roster, journal and expiry gauges take it as if issued
  there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from server.ops.merge import Families, families_of, packed, unpacked
from server.ops.observe import Elsewhere
from server.store import CertificateRecord
from server.workers.link import WorkerLink
from server.workers.protocol import Message

if TYPE_CHECKING:
    from server.app import App

__all__ = ["share_figures"]

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

    async def others() -> list[Families]:
        answers = await link.ask("metrics")
        return [unpacked(a) for a in answers if isinstance(a, str)]  # None: that worker could not say

    async def elsewhere(names: Sequence[str]) -> Elsewhere:
        totals, seen = [0.0, 0.0, 0.0], dict[str, int]()
        for answer in await link.ask("observe", names=list(names)):
            if answer is None:
                continue
            totals = [t + float(a) for t, a in zip(totals, answer["totals"], strict=True)]
            for name, at in dict(answer["seen"]).items():
                seen[name] = max(seen.get(name, 0), int(at))
        return Elsewhere((totals[0], totals[1], totals[2]), seen)

    def issued(message: Message) -> None:
        for note in message["certs"]:
            cert = _cert_of(dict(note))
            s.observer.issued_elsewhere(cert)
            s.expiring.issued(cert)

    s.metrics.others = others
    s.observer.elsewhere = elsewhere
    link.on_cast("issued", issued)


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
