"""The store interface: what the domain services may ask of persistence.

Every method that writes is durable when it returns. Times are Unix seconds. The records
it returns are in server/store/records.py (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from kms.audit import AuditRecord
from server.store.records import (
    AUDIT_MARKER,
    AgentRecord,
    Audit,
    AuditEntry,
    AuditSink,
    CertificateRecord,
    Enrollment,
    Grant,
    JoinTokenRecord,
    KeyRecord,
    KeyVersionRecord,
    RevocationEvent,
    SealFn,
    StoreError,
    WriteOutcomeUnknown,
    audit_entries,
)

__all__ = [
    "AUDIT_MARKER",
    "AgentRecord",
    "Audit",
    "AuditEntry",
    "AuditSink",
    "CertificateRecord",
    "Enrollment",
    "Grant",
    "JoinTokenRecord",
    "KeyRecord",
    "KeyVersionRecord",
    "RevocationEvent",
    "SealFn",
    "Store",
    "StoreError",
    "WriteOutcomeUnknown",
    "audit_entries",
]


class Store(Protocol):
    async def close(self) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str, *, replace: bool) -> str:
        """Sets key (if unset, unless replace); returns the value now stored."""
        ...

    async def create_ca(self, key: str, cert: str) -> tuple[str, str]:
        """Stores the deployment's sealed CA key and its certificate together, unless a CA
        certificate is stored already (the key of an attempt that never stored one is
        replaced); returns the (key, certificate) now stored."""
        ...

    async def next_crl(self) -> tuple[int, list[CertificateRecord]]:
        """The next CRL number and every revoked certificate as of it, in one transaction."""
        ...

    async def is_empty(self) -> bool:
        """True while no token, certificate or key was ever stored."""
        ...

    async def add_join_token(
        self,
        token: JoinTokenRecord,
        *,
        allow_reenroll: bool = False,
        replace: bool = False,
        audit: Audit = None,
    ) -> None:
        """Stores a join token for token.name, in one transaction with the checks on that name.

        Raises:
            FailedPrecondition: the name was revoked and allow_reenroll is not set, or it
                holds a valid (unrevoked, unexpired at token.created_at) certificate and
                replace is not set. Nothing is written.
        """
        ...

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None: ...

    async def enroll(
        self, token_id: str, secret_hash: bytes, now: int, cert: CertificateRecord, *, audit: Audit = None
    ) -> Enrollment | None:
        """Consumes the token and records the agent and its certificate, in one transaction.

        A token created with replace also revokes (reason superseded) every valid
        certificate the name held, each with its event, in the same transaction.

        Returns None, and writes nothing, when the token is unknown, already
        used, expired at ``now`` or its hash differs: the caller cannot tell
        which, by design.

        Raises (writing nothing):
            PermissionDenied: the name was revoked and the token does not allow re-enrollment.
            FailedPrecondition: the name holds a valid certificate and the token does not replace it.
        """
        ...

    async def add_certificate(
        self,
        cert: CertificateRecord,
        groups: tuple[str, ...],
        *,
        renewed_from: str,
        not_renewed_since: int | None = None,
        audit: Audit = None,
    ) -> None:
        """Records a renewed certificate of an existing agent, and the one it was renewed from.

        Raises Revoked, writing nothing, if the agent or the certificate renewed_from was
        revoked meanwhile (a revocation that committed after the caller was authenticated,
        possibly through another replica); ResourceExhausted if the agent was issued a
        renewed certificate after not_renewed_since (two renewals racing each other: one wins).
        """
        ...

    async def get_agent_by_serial(self, serial: str) -> AgentRecord | None:
        """The agent holding certificate ``serial`` (with that certificate as ``latest``)."""
        ...

    async def list_agents(self) -> list[AgentRecord]: ...

    async def is_known_agent(self, name: str, now: int) -> bool:
        """Whether name ever enrolled, or an unused join token unexpired at now names it."""
        ...

    async def get_agent(self, name: str) -> AgentRecord | None:
        """The agent with its newest certificate, or None."""
        ...

    async def create_key(
        self, name: str, now: int, seal: SealFn, grants: list[Grant], *, audit: Audit = None
    ) -> KeyRecord:
        """Creates key name with version 1. Raises AlreadyExists."""
        ...

    async def rotate_key(
        self, name: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent]:
        """Adds a new current version; the old current one becomes deactivated. Raises NotFound.

        Appends a 'rotate' event naming the new version, in the same transaction.
        """
        ...

    async def grant_key(self, name: str, grant: Grant, now: int, *, audit: Audit = None) -> KeyRecord: ...

    async def ungrant_key(self, name: str, grant: Grant, *, audit: Audit = None) -> KeyRecord: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def destroy_key_version(
        self, name: str, version: int, now: int, *, audit: Audit = None
    ) -> KeyRecord:
        """Erases the material of a non-current version for good. Raises NotFound, FailedPrecondition."""
        ...

    async def release_key_version(
        self,
        name: str,
        version: int | None,
        agent: str,
        groups: tuple[str, ...],
        serial: str,
        now: int,
        *,
        audit: Audit = None,
    ) -> KeyVersionRecord:
        """Checks the grant, then returns the version (with sealed material) and logs the release.

        A revocation of the certificate serial (or its agent) and a release never both commit
        in the wrong order: once the revocation has committed, the release is refused.

        Raises:
            Revoked: the certificate serial was revoked (after the caller was authenticated).
            PermissionDenied: no grant for agent or its groups (also when the key does not exist).
            NotFound: no such version.
            FailedPrecondition: the version was destroyed.
        """
        ...

    # --- revocation (each returns the new event, or None when already revoked) ---

    async def revoke_certificate(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        """Raises NotFound for a serial this CA never issued."""
        ...

    async def revoke_lineage(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> list[RevocationEvent] | None:
        """Revokes serial and every certificate renewed from it, directly or not, in one transaction.

        One event per certificate newly revoked (serial's first, if it was not revoked yet),
        or None when every one of them was revoked already. A renewal from any of them racing
        this either commits first (and its certificate is revoked too) or is refused.
        Raises NotFound for a serial this CA never issued.
        """
        ...

    async def revoke_agent(
        self, name: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        """Revokes every certificate of name and bars re-enrollment. Raises NotFound."""
        ...

    async def revoke_key_version(
        self, name: str, version: int, reason: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> RevocationEvent | None:
        """Marks the version compromised (a new current version if it was current). Raises NotFound.

        A callable audit is given (event, the new current version or None), so
        both actions can be recorded.
        """
        ...

    async def last_event(
        self,
        *,
        kind: str,
        serial: str | None = None,
        agent: str | None = None,
        key: tuple[str, int] | None = None,
    ) -> RevocationEvent | None:
        """The newest event about a subject (for idempotent answers)."""
        ...

    async def events_after(self, seq: int, limit: int) -> list[RevocationEvent]: ...

    async def last_seq(self) -> int: ...

    async def get_certificate(self, serial: str) -> CertificateRecord | None: ...

    async def revoked_certificates(self) -> list[CertificateRecord]: ...

    # --- audit -------------------------------------------------------------------

    async def open_audit_chain(self, key: bytes, now: int, sink: AuditSink | None = None) -> int | None:
        """From now on, keys the chain with key and copies each committed record to sink.

        On a store that was never keyed (new, or from before the keyed chain),
        appends the ``audit.keyed`` record that begins the keyed chain and sets
        the marker to its seq, in one transaction. Returns that seq, or None
        when the marker is missing or unreadable (tampering: verification will
        say so; nothing is appended).
        """
        ...

    async def append_audit(self, entry: AuditEntry) -> None:
        """Appends an entry on its own (failures, and actions with no store write)."""
        ...

    async def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        """Appends entries in order, in one transaction (server/audit/trail.py's batches)."""
        ...

    async def audit_after(self, seq: int, limit: int) -> list[AuditRecord]: ...

    async def snapshot_to(self, target: Path) -> None:
        """Writes a consistent copy of the store to target (0600)."""
        ...

    # --- several servers on one store ------------------------------------------------

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Held by one server at a time across every server of this store (first start)."""
        ...

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
        """Runs until cancelled, calling wake() whenever other servers may have added events.

        connected(False) while the store cannot be reached, then connected(True).
        """
        ...
