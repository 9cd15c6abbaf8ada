"""The Revocation service: the watch stream, the CRL and certificate status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from kms.v1 import revocation_pb2, revocation_pb2_grpc
from server.api.convert import watch_message
from server.ca.crl import CrlPublisher
from server.endpoints.auth import current_caller
from server.revocation.service import RevocationService
from server.revocation.watch import WatchService

__all__ = ["RevocationServicer"]


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
            yield watch_message(item)

    async def GetCRL(
        self, request: revocation_pb2.GetCRLRequest, context: grpc.aio.ServicerContext
    ) -> revocation_pb2.GetCRLResponse:
        generation = request.generation or None  # 0: the one at /crl
        return revocation_pb2.GetCRLResponse(crl_der=await self._crl.current(generation))

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
