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
    types_pb2,
)
from server.agents import AgentDirectory
from server.auth import current_caller
from server.authn import Caller
from server.ca import CertificateAuthority
from server.enrollment import EnrollmentService

__all__ = ["AdminServicer", "EnrollmentServicer", "IdentityServicer"]


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


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self, ca: CertificateAuthority, enrollment: EnrollmentService, agents: AgentDirectory
    ) -> None:
        self._ca = ca
        self._enrollment = enrollment
        self._agents = agents

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
