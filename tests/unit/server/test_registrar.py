"""server/endpoints/registrar.py: what a server serves is registered as generic handlers only."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.endpoints.registrar import Registrar


class _Recording:
    """The real server, noting any service offered to it as registered methods."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: object) -> None:
        self.registered.append(service)
        self.server.add_registered_method_handlers(service, handlers)


def test_services_are_served_through_generic_handlers_only() -> None:
    """grpc.aio waits on one task per registered method at every call it accepts: none are registered."""

    async def body() -> tuple[int, list[str], list[str]]:
        server = grpc.aio.server()
        recording = _Recording(server)
        registrar = Registrar(recording)  # type: ignore[arg-type]
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), registrar)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        finally:
            await server.stop(None)
        return answer.status, recording.registered, registrar.services

    status, registered, services = asyncio.run(body())
    assert status == health_pb2.HealthCheckResponse.SERVING  # served all the same
    assert registered == []
    assert services == ["grpc.health.v1.Health"]
