"""What a gRPC server of ours serves, recorded as it is registered, so the lists derived from it cannot drift.

The generated add_*_to_server functions are given a Registrar instead of the server: it
registers the handlers it keeps (all, or on the enrollment port only the methods the
method table opens to anybody) and notes each service that got at least one. Health
(a status for each of those services) and reflection (listing them) are then added from
that record (add_standard_services).

Handlers reach the server as generic handlers only, never as "registered methods": grpc.aio
(1.85) keeps one pending request task per registered method and, for every call it accepts,
waits on all of them again with asyncio.wait. With the mTLS port's 30-odd methods that was
about 3 % of FetchKey's server CPU (bench fetch-key, A/B in one run), for a lookup the
generic handlers do in one dictionary access.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api.health import HealthBoard
from server.api.reflection import add_reflection

__all__ = ["HEALTH", "Registrar", "add_standard_services"]

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class Registrar:
    """Stands in for a server in generated add_*_to_server functions; registers what keep allows.

    Args:
        server: the real server.
        keep: whether a full method name ("/pkg.Service/Method") is registered (default: all).
    """

    def __init__(self, server: grpc.aio.Server, keep: Callable[[str], bool] = lambda method: True) -> None:
        self._server = server
        self._keep = keep
        self.services: list[str] = []  # in registration order

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the generated code passes the same table to add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        kept = {name: h for name, h in handlers.items() if self._keep(f"/{service}/{name}")}
        if kept:
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, kept),))
            self.services.append(service)


def add_standard_services(registrar: Registrar, board: HealthBoard) -> None:
    """This port's own Health and reflection v1 and v1alpha: both report every service the port
    serves, themselves included (and nothing another port serves)."""
    health = board.for_port()
    health_pb2_grpc.add_HealthServicer_to_server(health, registrar)
    add_reflection(registrar, [*registrar.services])
    health.track(registrar.services)
