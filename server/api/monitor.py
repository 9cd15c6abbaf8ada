"""The Monitor service, on the admin socket only: live views (kms-server top) and an agent's standing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from kms.v1 import monitor_pb2, monitor_pb2_grpc
from server.ops.observe import Observer, Overview, Window

__all__ = ["MonitorServicer"]


async def _windows(requests: AsyncIterator[monitor_pb2.ObserveRequest]) -> AsyncIterator[Window]:
    async for r in requests:
        yield Window(
            r.filter,
            r.agent_offset,
            r.agent_limit,
            r.key_offset,
            r.key_limit,
            r.event_limit,
            r.soon_limit,
            (r.interval_ms or 1000) / 1000,
        )


def _overview(o: Overview) -> monitor_pb2.Overview:
    return monitor_pb2.Overview(
        now=o.now,
        agents_total=o.agents_total,
        agents_matching=o.agents_matching,
        agents_online=o.agents_online,
        agents=[monitor_pb2.AgentRow(**vars(a)) for a in o.agents],
        keys_total=o.keys_total,
        keys_matching=o.keys_matching,
        keys=[monitor_pb2.KeyRow(**vars(k)) for k in o.keys],
        soon=[monitor_pb2.SoonRow(**vars(s)) for s in o.soon],
        events=[monitor_pb2.ObservedEvent(**vars(e)) for e in o.events],
        rpc_rate=o.rpc_rate,
        release_rate=o.release_rate,
        enrollment_rate=o.enrollment_rate,
    )


class MonitorServicer(monitor_pb2_grpc.MonitorServicer):
    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    async def Observe(
        self, request_iterator: AsyncIterator[monitor_pb2.ObserveRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[monitor_pb2.Overview]:
        async for overview in self._observer.follow(_windows(request_iterator)):
            yield _overview(overview)

    async def GetStanding(
        self, request: monitor_pb2.GetStandingRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.Standing:
        return monitor_pb2.Standing(**vars(await self._observer.standing(request.name, request.serial)))
