"""Thin gRPC servicers: decode, call one domain method, encode (STYLE 9).

Authentication, authorization and error mapping happen in the middleware chain (server/endpoints/).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization

from kms.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    enrollment_pb2,
    enrollment_pb2_grpc,
    handshake_pb2,
    handshake_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    revocation_pb2,
    revocation_pb2_grpc,
    types_pb2,
)
from server.audit.trail import AuditTrail
from server.ca.authority import CertificateAuthority
from server.ca.crl import CrlPublisher
from server.clock import seconds
from server.endpoints.auth import current_caller
from server.endpoints.authn import Caller
from server.enrollment.agents import AgentDirectory
from server.enrollment.service import EnrollmentService
from server.exchange import ExchangeService
from server.keys import KeyService
from server.revocation.service import Revocation, RevocationService
from server.revocation.watch import Heartbeat, Resume, WatchItem, WatchService
from server.store import KeyRecord, RevocationEvent

__all__ = [
    "AdminServicer",
    "EnrollmentServicer",
    "IdentityServicer",
    "HandshakeServicer",
    "KeysServicer",
    "RevocationServicer",
]


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServicer):
    def __init__(self, ca: CertificateAuthority, enrollment: EnrollmentService) -> None:
        self._ca = ca
        self._enrollment = enrollment

    async def GetCABundle(
        self, request: enrollment_pb2.GetCABundleRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.GetCABundleResponse:
        return enrollment_pb2.GetCABundleResponse(ca_bundle_pem=self._ca.bundle_pem.decode())

    async def Enroll(
        self, request: enrollment_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.EnrollResponse:
        enrolled = await self._enrollment.enroll(request.join_token, request.csr_der)
        return enrollment_pb2.EnrollResponse(
            certificate_der=enrolled.certificate.public_bytes(serialization.Encoding.DER),
            ca_chain_der=list(self._ca.chain_der),
            name=enrolled.agent.name,
            groups=list(enrolled.agent.groups),
            spiffe_id=enrolled.spiffe_id,
            watch_from_seq=enrolled.watch_from_seq,
        )


def _caller_info(caller: Caller) -> types_pb2.AgentInfo:
    return types_pb2.AgentInfo(
        name=caller.name,
        groups=list(caller.groups),
        spiffe_id=caller.spiffe_id,
        serial=caller.serial,
        not_before=seconds(caller.not_before),
        not_after=seconds(caller.not_after),
        status="valid",
    )


class IdentityServicer(identity_pb2_grpc.IdentityServicer):
    def __init__(self, ca: CertificateAuthority, enrollment: EnrollmentService) -> None:
        self._ca = ca
        self._enrollment = enrollment

    async def Renew(
        self, request: identity_pb2.RenewRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.RenewResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        cert = await self._enrollment.renew(caller, request.csr_der)
        return identity_pb2.RenewResponse(
            certificate_der=cert.public_bytes(serialization.Encoding.DER),
            ca_chain_der=list(self._ca.chain_der),
        )

    async def WhoAmI(
        self, request: identity_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.WhoAmIResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        return identity_pb2.WhoAmIResponse(agent=_caller_info(caller))


class KeysServicer(keys_pb2_grpc.KeysServicer):
    def __init__(self, keys: KeyService) -> None:
        self._keys = keys

    async def FetchKey(
        self, request: keys_pb2.FetchKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.FetchKeyResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        fetched = await self._keys.fetch(caller, request.name, request.version)
        return keys_pb2.FetchKeyResponse(
            name=fetched.version.key_name,
            version=fetched.version.version,
            state=fetched.version.state,
            created_at=fetched.version.created_at,
            wrapped_key=fetched.wrapped,
            wrapped_for_serial=caller.serial,
        )


def _key_info(key: KeyRecord, warnings: tuple[str, ...] = ()) -> admin_pb2.KeyInfo:
    return admin_pb2.KeyInfo(
        warnings=list(warnings),
        name=key.name,
        current_version=key.current_version,
        created_at=key.created_at,
        versions=[
            admin_pb2.KeyVersionInfo(
                version=v.version, state=v.state, created_at=v.created_at, state_changed_at=v.state_changed_at
            )
            for v in key.versions
        ],
        grants=[str(g) for g in key.grants],
    )


def event_message(event: RevocationEvent) -> revocation_pb2.RevocationEvent:
    return revocation_pb2.RevocationEvent(
        seq=event.seq,
        kind=event.kind,
        serial=event.serial or "",
        agent_name=event.agent_name or "",
        key_name=event.key_name or "",
        key_version=event.key_version or 0,
        reason=event.reason,
        at=event.at,
    )


@functools.lru_cache(maxsize=64)
def _event_response(event: RevocationEvent) -> revocation_pb2.WatchResponse:
    """Built once per event and shared by every stream that sends it (never mutated)."""
    return revocation_pb2.WatchResponse(event=event_message(event))


@functools.lru_cache(maxsize=4)
def _heartbeat_response(item: Heartbeat) -> revocation_pb2.WatchResponse:
    """Built once per tick and shared by every stream that sends it (never mutated)."""
    return revocation_pb2.WatchResponse(heartbeat=revocation_pb2.Heartbeat(current_seq=item.current_seq))


def _watch_message(item: WatchItem) -> revocation_pb2.WatchResponse:
    if isinstance(item, Heartbeat):
        return _heartbeat_response(item)
    if isinstance(item, Resume):
        return revocation_pb2.WatchResponse(
            resume=revocation_pb2.Resume(after_seq=item.after_seq, reason="fell behind")
        )
    return _event_response(item)


class RevocationServicer(revocation_pb2_grpc.RevocationServicer):
    def __init__(self, watch: WatchService, revocations: RevocationService, crl: CrlPublisher) -> None:
        self._watch = watch
        self._revocations = revocations
        self._crl = crl

    async def Watch(
        self, request: revocation_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[revocation_pb2.WatchResponse]:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        async for item in self._watch.stream(caller, request.after_seq):
            yield _watch_message(item)

    async def GetCRL(
        self, request: revocation_pb2.GetCRLRequest, context: grpc.aio.ServicerContext
    ) -> revocation_pb2.GetCRLResponse:
        return revocation_pb2.GetCRLResponse(crl_der=await self._crl.current())

    async def CheckCertificate(
        self, request: revocation_pb2.CheckCertificateRequest, context: grpc.aio.ServicerContext
    ) -> revocation_pb2.CheckCertificateResponse:
        status = await self._revocations.status(request.serial)
        record = status.record
        return revocation_pb2.CheckCertificateResponse(
            serial=status.serial,
            status=status.status,
            reason=(record.revocation_reason or "") if record else "",
            revoked_at=(record.revoked_at or 0) if record else 0,
            agent_name=record.agent_name if record else "",
            not_after=record.not_after if record else 0,
        )


class HandshakeServicer(handshake_pb2_grpc.HandshakeServicer):
    def __init__(self, exchanges: ExchangeService) -> None:
        self._exchanges = exchanges

    async def Exchange(
        self, request_iterator: AsyncIterator[handshake_pb2.HandshakeFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[handshake_pb2.HandshakeFrame]:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        async for frame in self._exchanges.exchange(caller, request_iterator):
            yield frame

    async def Listen(
        self, request_iterator: AsyncIterator[handshake_pb2.HandshakeFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[handshake_pb2.HandshakeFrame]:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        async for frame in self._exchanges.listen(caller, request_iterator):
            yield frame


def _revoke_response(revocation: Revocation) -> admin_pb2.RevokeResponse:
    return admin_pb2.RevokeResponse(
        event=event_message(revocation.event),
        already_revoked=revocation.already_revoked,
        cascaded=[event_message(e) for e in revocation.cascaded],
    )


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        enrollment: EnrollmentService,
        agents: AgentDirectory,
        keys: KeyService,
        revocations: RevocationService,
        audit: AuditTrail,
        backup: Callable[[Path], Awaitable[int]],
    ) -> None:
        self._audit = audit
        self._backup = backup
        self._ca = ca
        self._enrollment = enrollment
        self._agents = agents
        self._keys = keys
        self._revocations = revocations

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAuditResponse:
        records = [r async for r in self._audit.records(request.after_seq, request.limit)]
        return admin_pb2.ListAuditResponse(records=[admin_pb2.AuditRecord(**vars(r)) for r in records])

    async def VerifyAudit(
        self, request: admin_pb2.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.VerifyAuditResponse:
        bad, count = await self._audit.verify()
        if bad is None:
            return admin_pb2.VerifyAuditResponse(intact=True, records=count)
        return admin_pb2.VerifyAuditResponse(
            intact=False, first_bad_seq=bad.seq, records=count, problem=bad.problem
        )

    async def Backup(
        self, request: admin_pb2.BackupRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.BackupResponse:
        size = await self._backup(Path(request.path))
        return admin_pb2.BackupResponse(path=request.path, bytes=size)

    async def RevokeCertificate(
        self, request: admin_pb2.RevokeCertificateRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return _revoke_response(await self._revocations.revoke_certificate(request.serial, request.reason))

    async def RevokeAgent(
        self, request: admin_pb2.RevokeAgentRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return _revoke_response(await self._revocations.revoke_agent(request.name, request.reason))

    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return _revoke_response(
            await self._revocations.revoke_key(request.name, request.version, request.reason)
        )

    async def ListRevocations(
        self, request: admin_pb2.ListRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListRevocationsResponse:
        return admin_pb2.ListRevocationsResponse(
            events=[event_message(e) for e in await self._revocations.events()]
        )

    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        done = await self._keys.create(
            request.name, list(request.grants), allow_unknown_grantee=request.allow_unknown_grantee
        )
        return _key_info(done.record, done.warnings)

    async def RotateKey(
        self, request: admin_pb2.RotateKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return _key_info(await self._keys.rotate(request.name))

    async def GrantKey(
        self, request: admin_pb2.GrantKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        done = await self._keys.grant(
            request.name, request.grant, allow_unknown_grantee=request.allow_unknown_grantee
        )
        return _key_info(done.record, done.warnings)

    async def UngrantKey(
        self, request: admin_pb2.GrantKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return _key_info(await self._keys.ungrant(request.name, request.grant))

    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListKeysResponse:
        return admin_pb2.ListKeysResponse(keys=[_key_info(k) for k in await self._keys.list()])

    async def DestroyKeyVersion(
        self, request: admin_pb2.DestroyKeyVersionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return _key_info(await self._keys.destroy(request.name, request.version))

    async def CreateJoinToken(
        self, request: admin_pb2.CreateJoinTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateJoinTokenResponse:
        ttl = request.ttl_seconds if request.ttl_seconds else None  # 0: the server's default
        issued = await self._enrollment.create_token(
            request.name,
            list(request.groups),
            ttl,
            allow_reenroll=request.allow_reenroll,
            replace=request.replace,
        )
        return admin_pb2.CreateJoinTokenResponse(
            token=str(issued.token),
            token_id=issued.record.token_id,
            name=issued.record.name,
            groups=list(issued.record.groups),
            expires_at=issued.record.expires_at,
        )

    async def GetCA(
        self, request: admin_pb2.GetCARequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetCAResponse:
        return admin_pb2.GetCAResponse(
            certificate_pem=self._ca.bundle_pem.decode(),
            fingerprint=self._ca.fingerprint,
            trust_domain=self._ca.trust_domain,
        )

    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAgentsResponse:
        views = await self._agents.list()
        return admin_pb2.ListAgentsResponse(
            agents=[
                types_pb2.AgentInfo(
                    name=v.record.name,
                    groups=list(v.record.groups),
                    spiffe_id=v.spiffe_id,
                    serial=v.record.latest.serial,
                    not_before=v.record.latest.not_before,
                    not_after=v.record.latest.not_after,
                    status=v.status,
                )
                for v in views
            ]
        )
