"""Thin gRPC servicers: decode, call one domain method, encode (STYLE 9).

Authentication, authorization and error mapping happen in server.auth.
"""

from __future__ import annotations

import grpc
from cryptography.hazmat.primitives import serialization

from kms.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    enrollment_pb2,
    enrollment_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    types_pb2,
)
from server.agents import AgentDirectory
from server.auth import current_caller
from server.authn import Caller
from server.ca import CertificateAuthority
from server.enrollment import EnrollmentService
from server.keys import KeyService
from server.store import KeyRecord

__all__ = ["AdminServicer", "EnrollmentServicer", "IdentityServicer", "KeysServicer"]


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
        )


def _caller_info(caller: Caller) -> types_pb2.AgentInfo:
    return types_pb2.AgentInfo(
        name=caller.name,
        groups=list(caller.groups),
        spiffe_id=caller.spiffe_id,
        serial=caller.serial,
        not_before=int(caller.not_before.timestamp()),
        not_after=int(caller.not_after.timestamp()),
        status="valid",
    )


class IdentityServicer(identity_pb2_grpc.IdentityServicer):
    async def WhoAmI(
        self, request: identity_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.WhoAmIResponse:
        caller = current_caller.get()
        assert caller is not None  # AUTH_POLICY: AGENT only
        return identity_pb2.WhoAmIResponse(agent=_caller_info(caller))


class KeysServicer(keys_pb2_grpc.KeysServicer):
    def __init__(self, keys: KeyService) -> None:
        self._keys = keys

    async def FetchKey(
        self, request: keys_pb2.FetchKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.FetchKeyResponse:
        caller = current_caller.get()
        assert caller is not None  # AUTH_POLICY: AGENT only
        fetched = await self._keys.fetch(caller, request.name, request.version)
        return keys_pb2.FetchKeyResponse(
            name=fetched.version.key_name,
            version=fetched.version.version,
            state=fetched.version.state,
            created_at=fetched.version.created_at,
            wrapped_key=fetched.wrapped,
            wrapped_for_serial=caller.serial,
        )


def _key_info(key: KeyRecord) -> admin_pb2.KeyInfo:
    return admin_pb2.KeyInfo(
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


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        enrollment: EnrollmentService,
        agents: AgentDirectory,
        keys: KeyService,
    ) -> None:
        self._ca = ca
        self._enrollment = enrollment
        self._agents = agents
        self._keys = keys

    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return _key_info(await self._keys.create(request.name, list(request.grants)))

    async def RotateKey(
        self, request: admin_pb2.RotateKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return _key_info(await self._keys.rotate(request.name))

    async def GrantKey(
        self, request: admin_pb2.GrantKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyInfo:
        return _key_info(await self._keys.grant(request.name, request.grant))

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
        issued = await self._enrollment.create_token(request.name, list(request.groups), ttl)
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
