"""The Identity service: an agent renews its certificate and asks who it is."""

from __future__ import annotations

import grpc
from cryptography.hazmat.primitives import serialization

from kms.v1 import identity_pb2, identity_pb2_grpc
from server.api.convert import caller_info
from server.ca.authority import CertificateAuthority
from server.endpoints.auth import current_caller
from server.enrollment.service import EnrollmentService

__all__ = ["IdentityServicer"]


class IdentityServicer(identity_pb2_grpc.IdentityServicer):
    def __init__(self, ca: CertificateAuthority, enrollment: EnrollmentService) -> None:
        self._ca = ca
        self._enrollment = enrollment

    async def Renew(
        self, request: identity_pb2.RenewRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.RenewResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        cert, chain = await self._enrollment.renew_chained(caller, request.csr_der)
        return identity_pb2.RenewResponse(
            certificate_der=cert.public_bytes(serialization.Encoding.DER), ca_chain_der=list(chain)
        )

    async def WhoAmI(
        self, request: identity_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.WhoAmIResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        return identity_pb2.WhoAmIResponse(agent=caller_info(caller))
