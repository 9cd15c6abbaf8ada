"""grpc.health.v1.Health, with the List method the asyncio servicer of grpcio-health-checking lacks.

The library's asyncio HealthServicer (1.85) answers Check and Watch but not List: a List call
fell through to the generated base class and raised NotImplementedError, so every call logged a
traceback and answered INTERNAL, on the anonymous enrollment port too. List answers what Check
would for every service whose status was set.

Which services it reports is not a list kept by hand: each port tells it the services it
registered (track, from server/endpoints/registrar.py), and set_all sets them with the
server as a whole ("").
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

__all__ = ["Health"]


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
