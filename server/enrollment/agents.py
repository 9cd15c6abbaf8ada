"""The agent directory: what the server knows about enrolled agents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kms.identity import agent_spiffe_id
from kms.revocation import HOLD
from server.clock import Clock, now_seconds
from server.store import AgentRecord, Store

__all__ = ["AgentDirectory", "AgentView", "certificate_status"]


@dataclass(frozen=True)
class AgentView:
    record: AgentRecord
    spiffe_id: str
    status: str  # of record.latest: "valid", "held", "revoked", "expired" or "not yet valid"


def certificate_status(revocation_reason: str | None, not_before: int, not_after: int, now: int) -> str:
    """A certificate's state as its next call would find it: "valid", "held" (a hold may be
    released), "revoked", "expired" or "not yet valid" (agents list, top, confirmations)."""
    if revocation_reason is not None:
        return "held" if revocation_reason == HOLD else "revoked"
    if now >= not_after:
        return "expired"
    if now < not_before:
        return "not yet valid"
    return "valid"


class AgentDirectory:
    def __init__(
        self,
        store: Store,
        trust_domain: str,
        clock: Clock,
        revocation_reason: Callable[[str], str | None] = lambda serial: None,
    ) -> None:
        self._store = store
        self._trust_domain = trust_domain
        self._clock = clock
        # The revocation service's map, which every call is authenticated against:
        # a listing must never call valid what the next call would refuse.
        self._revocation_reason = revocation_reason

    def _status(self, agent: AgentRecord, now: int) -> str:
        cert = agent.latest
        reason = self._revocation_reason(cert.serial) or cert.revocation_reason
        if cert.revoked_at is not None and reason is None:
            reason = "unspecified"
        return certificate_status(reason, cert.not_before, cert.not_after, now)

    async def list(self) -> list[AgentView]:
        agents = await self._store.list_agents()
        now = now_seconds(self._clock)  # after the read: the freshest word on expiry
        return [
            AgentView(a, agent_spiffe_id(self._trust_domain, a.name), self._status(a, now)) for a in agents
        ]
