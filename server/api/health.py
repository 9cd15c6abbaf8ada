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

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

__all__ = ["Health", "HealthBoard", "StoreHealth"]

logger = logging.getLogger(__name__)


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


@dataclass
class StoreHealth:
    """Reports NOT_SERVING while the store is unreachable, so load balancers send calls elsewhere.

    The event follower calls it with each change of the store's reachability.
    """

    health: HealthBoard
    _up: bool = True
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __call__(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        logger.warning("store reachable again" if up else "store unreachable: health is NOT_SERVING")
        task = asyncio.create_task(self._set_all(up))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _set_all(self, up: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set_all(status)
