"""The Admin service, on the admin socket: tokens, keys, revocations, audit, backup."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from kms.errors import FailedPrecondition
from kms.v1 import admin_pb2, admin_pb2_grpc
from server.api.ca_convert import ca_generation, parse_ca_key_type
from server.api.convert import agent_info, entry_message, key_info, revoke_response
from server.audit.trail import AuditTrail
from server.ca.authority import CertificateAuthority
from server.ca.rotation import CARotation
from server.enrollment.agents import AgentDirectory
from server.enrollment.service import EnrollmentService
from server.keys import KeyService
from server.revocation.service import RevocationService

__all__ = ["AdminServicer"]


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
        ca_rotation: CARotation | None = None,
    ) -> None:
        self._ca_rotation = ca_rotation
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
        return admin_pb2.ListAuditResponse(records=[admin_pb2.AuditRecord(**r._asdict()) for r in records])

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
        return revoke_response(await self._revocations.revoke_certificate(request.serial, request.reason))

    async def RevokeAgent(
        self, request: admin_pb2.RevokeAgentRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoke_response(await self._revocations.revoke_agent(request.name, request.reason))

    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoke_response(
            await self._revocations.revoke_key(request.name, request.version, request.reason)
        )

    async def ListRevocations(
        self, request: admin_pb2.ListRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListRevocationsResponse:
        entries = await self._revocations.entries(active=request.active)
        return admin_pb2.ListRevocationsResponse(events=[entry_message(e) for e in entries])

    async def ReleaseCertificate(
        self, request: admin_pb2.ReleaseCertificateRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoke_response(await self._revocations.release_certificate(request.serial))

    async def ReleaseAgent(
        self, request: admin_pb2.ReleaseAgentRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeResponse:
        return revoke_response(await self._revocations.release_agent(request.name))

    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        done = await self._keys.create(
            request.name,
            list(request.grants),
            allow_unknown_grantee=request.allow_unknown_grantee,
            key_type=request.key_type,
            expires_at=request.expires_at,
            rotate_every=request.rotate_every,
        )
        return key_info(done.record, done.warnings)

    async def RotateKey(
        self, request: admin_pb2.RotateKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return key_info(await self._keys.rotate(request.name))

    async def GrantKey(
        self, request: admin_pb2.GrantKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        done = await self._keys.grant(
            request.name, request.grant, allow_unknown_grantee=request.allow_unknown_grantee
        )
        return key_info(done.record, done.warnings)

    async def UngrantKey(
        self, request: admin_pb2.GrantKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return key_info(await self._keys.ungrant(request.name, request.grant))

    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListKeysResponse:
        return admin_pb2.ListKeysResponse(keys=[key_info(k) for k in await self._keys.list()])

    async def DestroyKeyVersion(
        self, request: admin_pb2.DestroyKeyVersionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return key_info(await self._keys.destroy(request.name, request.version))

    async def DisableKey(
        self, request: admin_pb2.DisableKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyStateResponse:
        done = await self._keys.disable(request.name, request.reason)
        return admin_pb2.KeyStateResponse(key=key_info(done.record), changed=done.changed)

    async def EnableKey(
        self, request: admin_pb2.EnableKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyStateResponse:
        done = await self._keys.enable(request.name)
        return admin_pb2.KeyStateResponse(key=key_info(done.record), changed=done.changed)

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

    async def SetKey(
        self, request: admin_pb2.SetKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        expires_at = request.expires_at if request.HasField("expires_at") else None
        rotate_every = request.rotate_every if request.HasField("rotate_every") else None
        return key_info(await self._keys.set_schedule(request.name, expires_at, rotate_every))

    async def GetKey(
        self, request: admin_pb2.GetKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return key_info(await self._keys.get(request.name))

    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAgentsResponse:
        views = await self._agents.list()
        return admin_pb2.ListAgentsResponse(agents=[agent_info(v) for v in views])

    async def RotateCA(
        self, request: admin_pb2.RotateCARequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CAGeneration:
        key_type = parse_ca_key_type(request.key_type) if request.key_type else None
        return ca_generation(await self._rotation().rotate(key_type, request.now, request.revoke_old))

    async def ListCAs(
        self, request: admin_pb2.ListCAsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListCAsResponse:
        return admin_pb2.ListCAsResponse(cas=[ca_generation(g) for g in await self._rotation().generations()])

    async def ActivateCA(
        self, request: admin_pb2.ActivateCARequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CAGeneration:
        return ca_generation(await self._rotation().activate(request.now, request.revoke_old))

    async def CancelCARotation(
        self, request: admin_pb2.CancelCARotationRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CAGeneration:
        return ca_generation(await self._rotation().cancel())

    def _rotation(self) -> CARotation:
        if self._ca_rotation is None:
            raise FailedPrecondition("CA rotation is not served here")
        return self._ca_rotation
