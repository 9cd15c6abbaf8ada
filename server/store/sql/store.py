"""The one store: each Store method, as a transaction of sql/ run by a backend.

Every method that writes is durable when it returns. Times are Unix seconds.

A backend (sqlite/, postgres/) is held, not inherited: it owns connections and
commits; this owns what each transaction does, and appends its audit record
inside it, so an action is recorded exactly when it happens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

from kms.audit import AuditRecord
from server.store.dialect import Backend, Body, Tx
from server.store.records import (
    AgentRecord,
    Audit,
    AuditEntry,
    AuditSink,
    CertificateRecord,
    Enrollment,
    JoinTokenRecord,
    RevocationEvent,
    SealFn,
    audit_entries,
)
from server.store.sql import agents, audit, due, events, holds
from server.store.sql.ca_compromise import CACompromiseMethods
from server.store.sql.cas import CAMethods
from server.store.sql.key_store import KeyMethods

__all__ = ["SqlStore"]

T = TypeVar("T")


async def _done(tx: Tx) -> bool:
    return True


class SqlStore(KeyMethods, due.DueMethods, CAMethods, CACompromiseMethods):
    """What the domain services may ask of persistence (``server.store.Store``); keys' methods
    are KeyMethods (sql/key_store.py), the key scheduler's DueMethods (sql/due.py)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # The chain key (None: unkeyed, format v1: stores opened by tests and tools); set once, at start.
        self._audit_key: bytes | None = None

    async def close(self) -> None:
        await self._backend.close()

    # Plain functions returning the backend's awaitable, not coroutines of their own:
    # one frame fewer between every call and its commit (FetchKey's path).
    def _read(self, body: Body[T]) -> Awaitable[T]:
        return self._backend.read(body)

    def _change(
        self, body: Body[T], audit_with: Audit = None, *, savepoint: bool = True, invalidates: bool = False
    ) -> Awaitable[T]:
        """Runs body in a transaction with its audit records; returns once it is durable.

        A result of None means nothing happened (an idempotent repeat, a refused
        token), and appends nothing.
        """
        if audit_with is None:
            return self._backend.write(body, savepoint=savepoint, invalidates=invalidates)

        async def step(tx: Tx) -> T:
            result = await body(tx)
            entries = audit_entries(audit_with, result)
            if entries:
                await audit.append(tx, self._audit_key, entries)
            return result

        return self._backend.write(step, savepoint=savepoint, invalidates=invalidates)

    async def schema_version(self) -> int:
        return int(await self._read(lambda tx: tx.fetchval("SELECT MAX(version) FROM schema_version")))

    # --- meta, CA, tokens, enrollment, agents ---------------------------------------

    async def get_meta(self, key: str) -> str | None:
        return await self._read(lambda tx: agents.get_meta(tx, key))

    async def set_meta(self, key: str, value: str, *, replace: bool) -> str:
        """Sets key (if unset, unless replace); returns the value now stored."""
        return await self._change(lambda tx: agents.set_meta(tx, key, value, replace))

    async def create_ca(self, key: str, cert: str) -> tuple[str, str]:
        """Stores the deployment's sealed CA key and its certificate together, unless a CA
        certificate is stored already (the key of an attempt that never stored one is
        replaced); returns the (key, certificate) now stored."""
        return await self._change(lambda tx: agents.create_ca(tx, key, cert))

    async def next_crl(self) -> tuple[int, list[CertificateRecord]]:
        """The next CRL number and every revoked certificate as of it, in one transaction."""
        return await self._change(agents.next_crl)

    async def is_empty(self) -> bool:
        """True while no token, certificate or key was ever stored."""
        return await self._read(agents.is_empty)

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
        await self._change(lambda tx: agents.add_join_token(tx, token, allow_reenroll, replace), audit)

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None:
        return await self._read(lambda tx: agents.get_join_token(tx, token_id))

    async def enroll(
        self, token_id: str, secret_hash: bytes, now: int, cert: CertificateRecord, *, audit: Audit = None
    ) -> Enrollment | None:
        """Consumes the token and records the agent and its certificate, in one transaction.

        A token created with replace also revokes (reason superseded) every valid certificate
        the name held, each with its event. Returns None, and writes nothing, when the token is
        unknown, already used, expired at ``now`` or its hash differs (which, by design, unsaid).

        Raises (writing nothing):
            PermissionDenied: the name was revoked and the token does not allow re-enrollment.
            FailedPrecondition: the name holds a valid certificate and the token does not replace it.
        """
        return await self._change(lambda tx: agents.enroll(tx, token_id, secret_hash, now, cert), audit)

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
        await self._change(
            lambda tx: agents.add_certificate(tx, cert, groups, renewed_from, not_renewed_since), audit
        )

    async def get_agent_by_serial(self, serial: str) -> AgentRecord | None:
        """The agent holding certificate ``serial`` (with that certificate as ``latest``)."""
        return await self._read(lambda tx: agents.get_agent_by_serial(tx, serial))

    async def list_agents(self) -> list[AgentRecord]:
        return await self._read(agents.list_agents)

    async def renewed_from(self, serial: str) -> list[str]:
        """The certificates renewed from serial, at any remove."""
        return await self._read(lambda tx: agents.renewed_from(tx, serial))

    async def unrevoked_serials(self, name: str, now: int) -> list[str]:
        """The serials of name's certificates that are neither revoked, held nor expired at now."""
        return await self._read(lambda tx: agents.unrevoked_serials(tx, name, now))

    async def is_known_agent(self, name: str, now: int) -> bool:
        """Whether name ever enrolled, or an unused join token unexpired at now names it."""
        return await self._read(lambda tx: agents.is_known_agent(tx, name, now))

    async def get_agent(self, name: str) -> AgentRecord | None:
        """The agent with its newest certificate, or None."""
        return await self._read(lambda tx: agents.get_agent(tx, name))

    # --- revocation ------------------------------------------------------------------

    async def revoke_certificate(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        """Raises NotFound for a serial this CA never issued."""
        return await self._change(lambda tx: events.revoke_certificate(tx, serial, reason, now), audit)

    async def revoke_lineage(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> list[RevocationEvent] | None:
        """Revokes serial and every certificate renewed from it, directly or not, in one transaction.

        One event per certificate newly revoked (serial's first, if it was not revoked yet),
        or None when every one of them was revoked already. A renewal from any of them racing
        this either commits first (and its certificate is revoked too) or is refused.
        Raises NotFound for a serial this CA never issued.
        """
        return await self._change(lambda tx: events.revoke_lineage(tx, serial, reason, now), audit)

    async def revoke_agent(
        self, name: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        """Revokes every certificate of name and bars re-enrollment (a hold: holds the certificates in
        force, and bars nothing). Raises NotFound."""
        return await self._change(lambda tx: events.revoke_agent(tx, name, reason, now), audit)

    async def release_certificate(self, serial: str, now: int, *, audit: Audit = None) -> RevocationEvent:
        """Lifts a certificate's hold. Raises NotFound, or FailedPrecondition if it is not held."""
        return await self._change(lambda tx: holds.release_certificate(tx, serial, now), audit)

    async def release_agent(self, name: str, now: int, *, audit: Audit = None) -> RevocationEvent:
        """Lifts what the agent's newest hold holds still. Raises NotFound, or FailedPrecondition."""
        return await self._change(lambda tx: holds.release_agent(tx, name, now), audit)

    async def revoke_key_version(
        self, name: str, version: int, reason: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> RevocationEvent | None:
        """Marks the version compromised (a new current version if it was current). Raises NotFound.

        A callable audit is given (event, the new current version or None), so
        both actions can be recorded.
        """
        done = await self._change(
            lambda tx: events.revoke_key_version(tx, name, version, reason, now, seal),
            audit,
            invalidates=True,
        )
        return None if done is None else done[0]

    async def last_event(
        self,
        *,
        kind: str,
        serial: str | None = None,
        agent: str | None = None,
        key: tuple[str, int] | None = None,
    ) -> RevocationEvent | None:
        """The newest event about a subject (for idempotent answers)."""
        return await self._read(lambda tx: events.last_event(tx, kind, serial, agent, key))

    async def events_after(self, seq: int, limit: int) -> list[RevocationEvent]:
        return await self._read(lambda tx: events.events_after(tx, seq, limit))

    async def last_seq(self) -> int:
        return await self._read(events.last_seq)

    async def get_certificate(self, serial: str) -> CertificateRecord | None:
        return await self._read(lambda tx: events.get_certificate(tx, serial))

    async def revoked_certificates(self) -> list[CertificateRecord]:
        return await self._read(events.revoked_certificates)

    # --- audit -----------------------------------------------------------------------

    async def open_audit_chain(self, key: bytes, now: int, sink: AuditSink | None = None) -> int | None:
        """From now on, keys the chain with key and copies each committed record to sink.

        On a store that was never keyed (new, or from before the keyed chain),
        appends the ``audit.keyed`` record that begins the keyed chain and sets
        the marker to its seq, in one transaction. Returns that seq, or None
        when the marker is missing or unreadable (tampering: verification will
        say so; nothing is appended).
        """
        self._audit_key = key
        self._backend.copy_audit_to(sink)
        return await self._change(lambda tx: audit.open_chain(tx, key, now))

    async def append_audit(self, entry: AuditEntry) -> None:
        # Only a later insert: no savepoint needed.
        """Appends an entry on its own (failures, and actions with no store write)."""
        await self._change(_done, entry, savepoint=False)

    async def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        """Appends entries in order, in one transaction (server/audit/trail.py's batches)."""
        await self._change(lambda tx: audit.append(tx, self._audit_key, entries), savepoint=False)

    async def audit_after(self, seq: int, limit: int) -> list[AuditRecord]:
        return await self._read(lambda tx: audit.audit_after(tx, seq, limit))

    # --- the backend's own -------------------------------------------------------------

    async def snapshot_to(self, target: Path) -> None:
        """Writes a consistent copy of the store to target (0600)."""
        await self._backend.snapshot_to(target)

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Held by one server at a time across every server of this store (first start)."""
        return self._backend.exclusive()

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
        """Runs until cancelled, calling wake() whenever other servers may have added events.

        connected(False) while the store cannot be reached, then connected(True).
        """
        await self._backend.follow_events(wake, connected)
