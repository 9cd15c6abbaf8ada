"""grpc.health.v1.Health, with the List method the asyncio servicer of grpcio-health-checking lacks.

The library's asyncio HealthServicer (1.85) answers Check and Watch but not List: a List call
fell through to the generated base class and raised NotImplementedError, so every call logged a
traceback and answered INTERNAL, on the anonymous enrollment port too. List answers what Check
would for every service whose status was set.

Which services it reports is not a list kept by hand: each port has its own Health, told the
services that port registered (track, from server/endpoints/registrar.py), so the enrollment
port does not report the agent services it does not serve. HealthBoard sets every port's
Health at once, each with the server as a whole ("").
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

__all__ = ["Health", "HealthBoard"]


class Health(HealthServicer):  # type: ignore[misc]  # the library ships no types
    def __init__(self) -> None:
        super().__init__()
        self._reported: set[str] = {""}

    def track(self, services: Iterable[str]) -> None:
        """Reports these services too (by full name, "kms.v1.Keys") from the next set_all on."""
        self._reported.update(services)

    async def set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        """Sets the server as a whole and every tracked service to status."""
        for service in sorted(self._reported):
            await self.set(service, status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # _server_status is the library's own table of what Check answers (set, graceful shutdown).
        statuses = {
            service: health_pb2.HealthCheckResponse(status=status)
            for service, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)


class HealthBoard:
    """Every port's Health, set together (start, store outages, graceful shutdown)."""

    def __init__(self) -> None:
        self._ports: list[Health] = []

    def for_port(self) -> Health:
        health = Health()
        self._ports.append(health)
        return health

    async def set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for health in self._ports:
            await health.set_all(status)

    async def enter_graceful_shutdown(self) -> None:
        for health in self._ports:
            await health.enter_graceful_shutdown()
