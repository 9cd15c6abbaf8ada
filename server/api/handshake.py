"""The Handshake service: session keys with the server (Exchange) and relayed between agents (Listen)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from kms.v1 import handshake_pb2, handshake_pb2_grpc
from server.endpoints.auth import current_caller
from server.exchange import ExchangeService

__all__ = ["HandshakeServicer"]


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
