"""The Enrollment service: the CA bundle and enrollment, for anonymous callers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from cryptography.hazmat.primitives import serialization

from kms.v1 import enrollment_pb2, enrollment_pb2_grpc
from server.ca.authority import CertificateAuthority
from server.enrollment.service import EnrollmentService

__all__ = ["EnrollmentServicer"]


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        enrollment: EnrollmentService,
        trust_bundle: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        self._ca = ca
        self._enrollment = enrollment
        self._trust_bundle = trust_bundle  # the bundle and its version; None: the active CA alone (0)

    async def GetCABundle(
        self, request: enrollment_pb2.GetCABundleRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.GetCABundleResponse:
        active = self._ca.bundle_pem.decode()
        trust, version = await self._trust_bundle() if self._trust_bundle is not None else (active, 0)
        return enrollment_pb2.GetCABundleResponse(
            ca_bundle_pem=active, trust_bundle_pem=trust, trust_bundle_version=version
        )

    async def Enroll(
        self, request: enrollment_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.EnrollResponse:
        enrolled = await self._enrollment.enroll(request.join_token, request.csr_der)
        return enrollment_pb2.EnrollResponse(
            certificate_der=enrolled.certificate.public_bytes(serialization.Encoding.DER),
            ca_chain_der=list(enrolled.ca_chain_der or self._ca.chain_der),
            name=enrolled.agent.name,
            groups=list(enrolled.agent.groups),
            spiffe_id=enrolled.spiffe_id,
            watch_from_seq=enrolled.watch_from_seq,
        )
