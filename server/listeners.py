"""The server's doors: the mTLS API port, the enrollment port, the admin socket, the HTTP side.

Each is built and bound by one step here, over the domain graph (server/wiring.py);
none serves until App.start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc

from kms.addresses import join_hostport
from kms.errors import FailedPrecondition
from kms.profile import StatusUrls
from kms.v1 import (
    admin_pb2_grpc,
    enrollment_pb2_grpc,
    handshake_pb2_grpc,
    identity_pb2_grpc,
    keys_pb2_grpc,
    monitor_pb2_grpc,
    revocation_pb2_grpc,
)
from server.api.admin import AdminServicer
from server.api.enrollment import EnrollmentServicer
from server.api.handshake import HandshakeServicer
from server.api.identity import IdentityServicer
from server.api.keys import KeysServicer
from server.api.monitor import MonitorServicer
from server.api.revocation import RevocationServicer
from server.ca.ocsp import OcspResponder
from server.clock import now_seconds
from server.config import ServerConfig
from server.deployment.datadir import DataDir
from server.endpoints.auth import AuthInterceptor, Listener
from server.endpoints.enroll_port import EnrollmentPort, open_enrollment_port
from server.endpoints.registrar import Registrar, add_standard_services
from server.ops.expiry import WINDOWS as EXPIRY_WINDOWS
from server.ops.http import HttpSidePort
from server.wiring import Backup, Services
from server.workers.link import WorkerRole

__all__ = ["GRPC_OPTIONS", "Listeners", "bind_http", "open_listeners"]

logger = logging.getLogger(__name__)

# What every gRPC server of ours is built with, but the size of a request (--max-request-bytes)
# and the TLS handshake timeout. bench/baseline_server.py copies them.
GRPC_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Without this gRPC sets SO_REUSEPORT and a second process could
    # share (and steal calls from) our port instead of failing to bind.
    ("grpc.so_reuseport", 0),
    # Find dead peers (a Listen or Watch stream whose agent vanished) within a minute.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    # gRPC cancels new calls beyond this many not yet picked up by the
    # application (default 1,000): a fleet reconnecting its watch streams at
    # once after a restart must not be turned away in bulk.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
)


def _options(cfg: ServerConfig) -> list[tuple[str, Any]]:
    return [*GRPC_OPTIONS, ("grpc.max_receive_message_length", cfg.max_request_bytes)]


def _tls_options(cfg: ServerConfig, *, shared: bool = False) -> list[tuple[str, Any]]:
    # gRPC holds a connection whose TLS handshake has not finished for 120 s by
    # default: an idle connect() would cost a descriptor for that long.
    handshake_ms = int(cfg.tls_handshake_timeout.total_seconds() * 1000)
    options = [*_options(cfg), ("grpc.server_handshake_timeout_ms", handshake_ms)]
    if shared:  # workers share the port; their supervisor holds it against everyone else
        options = [o for o in options if o[0] != "grpc.so_reuseport"] + [("grpc.so_reuseport", 1)]
    return options


@dataclass
class Listeners:
    """The bound servers and their ports (the port each one really got: the config may say 0)."""

    api: grpc.aio.Server
    port: int
    enroll: EnrollmentPort
    admin: grpc.aio.Server | None  # None: a worker other than the primary (server/workers/)
    http: HttpSidePort | None
    http_port: int | None

    async def start(self) -> None:
        await self.api.start()
        await self.enroll.start()
        if self.admin is not None:
            await self.admin.start()

    async def stop(self, grace: float) -> None:
        """No new calls; calls in flight finish within grace."""
        if self.http is not None:
            await self.http.stop()
        admin = [] if self.admin is None else [self.admin.stop(grace)]
        await asyncio.gather(self.api.stop(grace), self.enroll.stop(grace), *admin)


async def open_listeners(
    cfg: ServerConfig,
    datadir: DataDir,
    services: Services,
    backup: Backup,
    http_sock: socket.socket | None,
    role: WorkerRole | None = None,
) -> Listeners:
    """Builds and binds every listener over services (http_sock: bound by bind_http, or None).
    One worker of several (role) shares the TCP ports with the others (SO_REUSEPORT); only the
    primary serves the admin socket and the HTTP side port.

    Raises:
        FailedPrecondition: an address cannot be bound.
    """
    revocation = RevocationServicer(services.watch, services.revocations, services.crl)
    api, port = _api_server(cfg, services, revocation, shared=role is not None)
    enroll = await _enrollment_server(cfg, services, revocation, shared=role is not None)
    primary = role is None or role.primary
    admin = _admin_server(cfg, datadir, services, backup) if primary else None
    http = await _http_side(cfg, services) if primary else None
    http_port = await http.start(http_sock) if http and http_sock else None
    return Listeners(api, port, enroll, admin, http, http_port)


def _api_server(
    cfg: ServerConfig, services: Services, revocation: RevocationServicer, *, shared: bool
) -> tuple[grpc.aio.Server, int]:
    """The mTLS port: every agent-facing service, behind the interceptor."""
    s = services
    api = grpc.aio.server(
        interceptors=[
            AuthInterceptor(
                Listener.API, s.authenticator, s.guard, s.metrics, s.limits, s.failures, settle=s.link
            )
        ],
        options=_tls_options(cfg, shared=shared),
    )
    served = Registrar(api)  # what it registers, for health and reflection
    enrollment_pb2_grpc.add_EnrollmentServicer_to_server(
        EnrollmentServicer(s.ca, s.enrollment, s.ca_rotation.served_bundle), served
    )
    identity_pb2_grpc.add_IdentityServicer_to_server(IdentityServicer(s.ca, s.enrollment), served)
    keys_pb2_grpc.add_KeysServicer_to_server(KeysServicer(s.keys), served)
    revocation_pb2_grpc.add_RevocationServicer_to_server(revocation, served)
    handshake_pb2_grpc.add_HandshakeServicer_to_server(HandshakeServicer(s.exchanges), served)
    add_standard_services(served, s.health)
    port = _bind(api, cfg.listen, s.tls.credentials(require_client_auth=True), "--listen")
    return api, port


async def _enrollment_server(
    cfg: ServerConfig, services: Services, revocation: RevocationServicer, *, shared: bool
) -> EnrollmentPort:
    """The enrollment port: anonymous callers, behind the gate (server/endpoints/enroll_port.py)."""
    s = services
    return await open_enrollment_port(
        cfg,
        _tls_options(cfg),
        s.tls.credentials(require_client_auth=False),
        shared=shared,
        settle=s.link,
        enrollment=EnrollmentServicer(s.ca, s.enrollment, s.ca_rotation.served_bundle),
        revocation=revocation,
        health=s.health,
        metrics=s.metrics,
        limits=s.limits,
        failures=s.failures,
    )


def _admin_server(cfg: ServerConfig, datadir: DataDir, services: Services, backup: Backup) -> grpc.aio.Server:
    """The admin socket: a UNIX socket only the data dir's owner can open (0600)."""
    s = services
    admin = grpc.aio.server(
        interceptors=[AuthInterceptor(Listener.ADMIN, settle=s.link)], options=_options(cfg)
    )
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(s.ca, s.enrollment, s.agents, s.keys, s.revocations, s.trail, backup, s.ca_rotation),
        admin,
    )
    monitor_pb2_grpc.add_MonitorServicer_to_server(MonitorServicer(s.observer), admin)
    datadir.admin_socket.unlink(missing_ok=True)  # stale: we hold the data dir lock
    _bind(
        admin,
        f"unix:{datadir.admin_socket}",
        grpc.local_server_credentials(grpc.LocalConnectionType.UDS),
        "admin socket",
    )
    os.chmod(datadir.admin_socket, 0o600)
    return admin


async def _http_side(cfg: ServerConfig, services: Services) -> HttpSidePort | None:
    """CRL, OCSP, /metrics and /healthz over plain HTTP, if --http-listen is set."""
    if cfg.http_host is None:
        return None
    s = services
    await s.expiring.load()  # only /metrics reads it
    for label, window in EXPIRY_WINDOWS:
        s.metrics.expiring.labels(label).set_function(partial(s.expiring.count, window))
    probe = _HttpProbe(s)
    return HttpSidePort(
        s.crl,
        OcspResponder(s.ca, s.store, s.clock, s.ca_trust),
        s.metrics,
        probe.refresh_metrics,
        probe.healthy,
    )


@dataclass(frozen=True)
class _HttpProbe:
    services: Services

    async def refresh_metrics(self) -> None:
        self.services.expiring.refresh()  # O(1): at most starts a background re-read, once a minute
        await self._count_expiring_keys()

    async def _count_expiring_keys(self) -> None:
        """kms_keys_expiring, counted in the store at each scrape (one range of the keys_by_expiry
        index), so it sees what other replicas changed; kept as it was if the store cannot answer."""
        s = self.services
        try:
            counts = await s.store.count_keys_expiring(
                now_seconds(s.clock), tuple(w for _, w in EXPIRY_WINDOWS)
            )
        except Exception as exc:
            logger.warning("could not count expiring keys for /metrics: %s", type(exc).__name__)
            return
        for (label, _), count in zip(EXPIRY_WINDOWS, counts, strict=True):
            s.metrics.keys_expiring.labels(label).set(count)

    async def healthy(self) -> bool:
        try:
            await self.services.store.last_seq()
        except Exception:  # a store that cannot answer is what /healthz reports
            return False
        return True


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials, what: str) -> int:
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise FailedPrecondition(f"cannot listen on {address} ({what}): address in use or not available")
    return int(port)


def bind_http(
    cfg: ServerConfig, *, serve: bool = True, shared: bool = False
) -> tuple[socket.socket | None, StatusUrls | None]:
    """Binds the HTTP side port first, so issued certificates can name its real port.

    Args:
        serve: False: only the URLs (a worker other than the primary, which serves the port).
        shared: the supervisor holds the port (SO_REUSEPORT) for its workers (server/workers/).
    """
    if cfg.http_host is None:
        return None, None
    if not serve:
        return None, _status_urls(cfg, cfg.http_port)
    family = socket.AF_INET6 if ":" in cfg.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((cfg.http_host, cfg.http_port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise FailedPrecondition(
            f"cannot listen on {cfg.http_host}:{cfg.http_port} (--http-listen): {exc.strerror}"
        ) from None
    return sock, _status_urls(cfg, sock.getsockname()[1])


def _status_urls(cfg: ServerConfig, port: int) -> StatusUrls:
    assert cfg.http_host is not None
    # A wildcard address is no place to send relying parties: name the server instead.
    host = cfg.sans[0] if cfg.http_host in ("0.0.0.0", "::") else cfg.http_host  # noqa: S104 - a comparison
    base = f"http://{join_hostport(host, port)}"
    return StatusUrls(crl=f"{base}/crl", ocsp=f"{base}/ocsp")
