"""The enrollment port: a gRPC server of its own, for anonymous callers only, behind the gate.

It registers only the methods that the method table (server/endpoints/methods.py)
opens to anybody (enrollment, the CA bundle, the CRL, health, reflection), so any other method answers
UNIMPLEMENTED from gRPC itself, before our code runs, and counts against
nobody: an agent RPC sent there without a certificate cannot lock anybody
out. It listens on a loopback port; the public enrollment address is the
gate's (server/endpoints/gate.py), which caps connections per peer address and tells
the interceptor each connection's real peer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from kms.errors import FailedPrecondition
from kms.v1 import enrollment_pb2_grpc, revocation_pb2_grpc
from server.api.health import HealthBoard
from server.config import ServerConfig
from server.endpoints.auth import AuthInterceptor, Limits, Listener
from server.endpoints.chain import Settle
from server.endpoints.failures import FailureReport
from server.endpoints.gate import AnonymousGate, gate_capacity
from server.endpoints.methods import ANONYMOUS_METHODS
from server.endpoints.registrar import Registrar, add_standard_services
from server.ops.metrics import Metrics

__all__ = ["EnrollmentPort", "open_enrollment_port"]

# What the log says of a connection the gate closed.
_GATE_REFUSALS = {
    "connection-cap": "enrollment connection closed at once: its address holds as many as allowed",
    "idle-connection": "enrollment connection dropped: no TLS handshake within the timeout",
}

# An enrollment needs a connection for a second or two; one left idle this long goes.
_IDLE_MS = 30_000
# The longest an anonymous connection lives, and the grace its calls then get to finish.
_MAX_AGE_MS = 120_000
_MAX_AGE_GRACE_MS = 10_000


@dataclass
class EnrollmentPort:
    server: grpc.aio.Server
    gate: AnonymousGate

    @property
    def port(self) -> int:
        return self.gate.port

    async def start(self) -> None:
        await self.server.start()
        self.gate.start_serving()

    async def stop(self, grace: float) -> None:
        """No new connections; calls in flight finish within grace; then every connection closes."""
        self.gate.stop_listening()
        await self.server.stop(grace)
        await self.gate.stop()


async def open_enrollment_port(
    cfg: ServerConfig,
    options: list[tuple[str, Any]],
    credentials: grpc.ServerCredentials,
    *,
    enrollment: enrollment_pb2_grpc.EnrollmentServicer,
    revocation: revocation_pb2_grpc.RevocationServicer,
    health: HealthBoard,
    metrics: Metrics,
    limits: Limits,
    failures: FailureReport,
    shared: bool = False,
    settle: Settle | None = None,
) -> EnrollmentPort:
    """Builds the enrollment server and binds the public address (serving nothing until start).

    Raises:
        FailedPrecondition: the address (or a loopback port) cannot be bound.
    """
    gate = AnonymousGate(
        cfg.enroll_host,
        cfg.enroll_port,
        per_address=cfg.max_anonymous_connections_per_address,
        total=gate_capacity(),
        first_byte_timeout=cfg.tls_handshake_timeout.total_seconds(),
        refused=lambda address, kind: failures.note(address, kind, _GATE_REFUSALS[kind]),
        shared=shared,
    )
    interceptor = AuthInterceptor(
        Listener.ENROLL, metrics=metrics, limits=limits, report=failures, peer=gate.peer_of, settle=settle
    )
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            *options,
            ("grpc.max_connection_idle_ms", _IDLE_MS),
            # An open call keeps a connection from being idle: an anonymous Health/Watch stream
            # would hold its gate slot for ever. Enrollment takes seconds; nothing here needs more.
            ("grpc.max_connection_age_ms", _MAX_AGE_MS),
            ("grpc.max_connection_age_grace_ms", _MAX_AGE_GRACE_MS),
        ],
    )
    only = Registrar(server, keep=ANONYMOUS_METHODS.__contains__)
    enrollment_pb2_grpc.add_EnrollmentServicer_to_server(enrollment, only)
    revocation_pb2_grpc.add_RevocationServicer_to_server(revocation, only)  # GetCRL alone
    add_standard_services(only, health)
    backend = server.add_secure_port("127.0.0.1:0", credentials)
    if not backend:
        raise FailedPrecondition("cannot listen on a loopback port (127.0.0.1:0) for the enrollment server")
    gate.bind(("127.0.0.1", backend))
    return EnrollmentPort(server, gate)
