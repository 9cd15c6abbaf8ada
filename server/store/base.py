"""The store interface and the records it returns.

Every method that writes is durable when it returns. Times are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kms.errors import FailedPrecondition

__all__ = ["AgentRecord", "CertificateRecord", "JoinTokenRecord", "Store", "StoreError"]


class StoreError(FailedPrecondition):
    """The store cannot be opened or used (corrupt, too new, unreadable)."""


@dataclass(frozen=True)
class JoinTokenRecord:
    token_id: str
    secret_hash: bytes
    name: str
    groups: tuple[str, ...]
    created_at: int
    expires_at: int
    used_at: int | None = None


@dataclass(frozen=True)
class CertificateRecord:
    serial: str  # lowercase hex, no leading zeros
    agent_name: str
    not_before: int
    not_after: int
    der: bytes
    issued_at: int
    token_id: str | None


@dataclass(frozen=True)
class AgentRecord:
    name: str
    groups: tuple[str, ...]
    created_at: int
    # The newest certificate issued to the agent.
    latest: CertificateRecord


class Store(Protocol):
    async def close(self) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta_once(self, key: str, value: str) -> str:
        """Sets key if unset; returns the value now stored (the old one if it was set)."""
        ...

    async def add_join_token(self, token: JoinTokenRecord) -> None: ...

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None: ...

    async def enroll(
        self, token_id: str, secret_hash: bytes, now: int, cert: CertificateRecord
    ) -> AgentRecord | None:
        """Consumes the token and records the agent and its certificate, in one transaction.

        Returns None, and writes nothing, when the token is unknown, already
        used, expired at ``now`` or its hash differs: the caller cannot tell
        which, by design.
        """
        ...

    async def get_agent_by_serial(self, serial: str) -> AgentRecord | None:
        """The agent holding certificate ``serial`` (with that certificate as ``latest``)."""
        ...

    async def list_agents(self) -> list[AgentRecord]: ...
