"""The one store: each Store method, as a transaction of sql/ run by a backend.

A backend (sqlite/, postgres/) is held, not inherited: it owns connections and
commits; this owns what each transaction does, and appends its audit record
inside it, so an action is recorded exactly when it happens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from kms.audit import AuditRecord
from server.store import rules
from server.store.base import (
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
    audit_entries,
)
from server.store.dialect import Backend, Body, Tx
from server.store.sql import agents, audit, events, keys

__all__ = ["SqlStore"]

T = TypeVar("T")


async def _done(tx: Tx) -> bool:
    return True


class SqlStore:
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
        return await self._read(lambda tx: _int(tx.fetchval("SELECT MAX(version) FROM schema_version")))

    # --- meta, CA, tokens, enrollment, agents ---------------------------------------

    async def get_meta(self, key: str) -> str | None:
        return await self._read(lambda tx: agents.get_meta(tx, key))

    async def set_meta(self, key: str, value: str, *, replace: bool) -> str:
        return await self._change(lambda tx: agents.set_meta(tx, key, value, replace))

    async def create_ca(self, key: str, cert: str) -> tuple[str, str]:
        return await self._change(lambda tx: agents.create_ca(tx, key, cert))

    async def next_crl(self) -> tuple[int, list[CertificateRecord]]:
        return await self._change(agents.next_crl)

    async def is_empty(self) -> bool:
        return await self._read(agents.is_empty)

    async def add_join_token(
        self,
        token: JoinTokenRecord,
        *,
        allow_reenroll: bool = False,
        replace: bool = False,
        audit: Audit = None,
    ) -> None:
        await self._change(lambda tx: agents.add_join_token(tx, token, allow_reenroll, replace), audit)

    async def get_join_token(self, token_id: str) -> JoinTokenRecord | None:
        return await self._read(lambda tx: agents.get_join_token(tx, token_id))

    async def enroll(
        self, token_id: str, secret_hash: bytes, now: int, cert: CertificateRecord, *, audit: Audit = None
    ) -> Enrollment | None:
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
        await self._change(
            lambda tx: agents.add_certificate(tx, cert, groups, renewed_from, not_renewed_since), audit
        )

    async def get_agent_by_serial(self, serial: str) -> AgentRecord | None:
        return await self._read(lambda tx: agents.get_agent_by_serial(tx, serial))

    async def list_agents(self) -> list[AgentRecord]:
        return await self._read(agents.list_agents)

    async def is_known_agent(self, name: str, now: int) -> bool:
        return await self._read(lambda tx: agents.is_known_agent(tx, name, now))

    async def get_agent(self, name: str) -> AgentRecord | None:
        return await self._read(lambda tx: agents.get_agent(tx, name))

    # --- keys ----------------------------------------------------------------------

    async def create_key(
        self, name: str, now: int, seal: SealFn, grants: list[Grant], *, audit: Audit = None
    ) -> KeyRecord:
        return await self._change(
            lambda tx: keys.create_key(tx, name, now, seal, grants), audit, invalidates=True
        )

    async def rotate_key(
        self, name: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent]:
        return await self._change(lambda tx: keys.rotate_key(tx, name, now, seal), audit, invalidates=True)

    async def grant_key(self, name: str, grant: Grant, now: int, *, audit: Audit = None) -> KeyRecord:
        return await self._change(lambda tx: keys.grant_key(tx, name, grant, now), audit, invalidates=True)

    async def ungrant_key(self, name: str, grant: Grant, *, audit: Audit = None) -> KeyRecord:
        return await self._change(lambda tx: keys.ungrant_key(tx, name, grant), audit, invalidates=True)

    async def list_keys(self) -> list[KeyRecord]:
        return await self._read(keys.list_keys)

    async def destroy_key_version(
        self, name: str, version: int, now: int, *, audit: Audit = None
    ) -> KeyRecord:
        record = await self._change(
            lambda tx: keys.destroy_key_version(tx, name, version, now), audit, invalidates=True
        )
        if not await self._backend.erase():
            raise rules.not_erased(name, version)
        return record

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
        # Reads, then inserts later only: no savepoint needed.
        return await self._change(
            lambda tx: keys.release_key_version(tx, name, version, agent, groups, serial, now),
            audit,
            savepoint=False,
        )

    # --- revocation ------------------------------------------------------------------

    async def revoke_certificate(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        return await self._change(lambda tx: events.revoke_certificate(tx, serial, reason, now), audit)

    async def revoke_lineage(
        self, serial: str, reason: str, now: int, *, audit: Audit = None
    ) -> list[RevocationEvent] | None:
        return await self._change(lambda tx: events.revoke_lineage(tx, serial, reason, now), audit)

    async def revoke_agent(
        self, name: str, reason: str, now: int, *, audit: Audit = None
    ) -> RevocationEvent | None:
        return await self._change(lambda tx: events.revoke_agent(tx, name, reason, now), audit)

    async def revoke_key_version(
        self, name: str, version: int, reason: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> RevocationEvent | None:
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
        self._audit_key = key
        self._backend.copy_audit_to(sink)
        return await self._change(lambda tx: audit.open_chain(tx, key, now))

    async def append_audit(self, entry: AuditEntry) -> None:
        # Only a later insert: no savepoint needed.
        await self._change(_done, entry, savepoint=False)

    async def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        await self._change(lambda tx: audit.append(tx, self._audit_key, entries), savepoint=False)

    async def audit_after(self, seq: int, limit: int) -> list[AuditRecord]:
        return await self._read(lambda tx: audit.audit_after(tx, seq, limit))

    # --- the backend's own -------------------------------------------------------------

    async def snapshot_to(self, target: Path) -> None:
        await self._backend.snapshot_to(target)

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        return self._backend.exclusive()

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
        await self._backend.follow_events(wake, connected)


async def _int(value: Any) -> int:
    return int(await value)
