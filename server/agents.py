"""The agent directory: what the server knows about enrolled agents."""

from __future__ import annotations

from dataclasses import dataclass

from kms.identity import agent_spiffe_id
from server.clock import Clock
from server.store import AgentRecord, Store

__all__ = ["AgentDirectory", "AgentView"]


@dataclass(frozen=True)
class AgentView:
    record: AgentRecord
    spiffe_id: str
    status: str  # "valid" or "expired"


class AgentDirectory:
    def __init__(self, store: Store, trust_domain: str, clock: Clock) -> None:
        self._store = store
        self._trust_domain = trust_domain
        self._clock = clock

    async def list(self) -> list[AgentView]:
        now = int(self._clock().timestamp())
        return [
            AgentView(
                a,
                agent_spiffe_id(self._trust_domain, a.name),
                "valid" if a.latest.not_before <= now < a.latest.not_after else "expired",
            )
            for a in await self._store.list_agents()
        ]
