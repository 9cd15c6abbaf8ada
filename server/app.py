"""The composition root: config -> data dir -> store -> CA -> services -> gRPC servers.

``create_server`` builds everything and binds the ports but serves nothing
until ``start``; ``serve`` runs it until SIGTERM/SIGINT. Tests build the same
graph on a temp dir and port 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from kms.addresses import join_hostport
from kms.cli import use_json_logs
from kms.errors import FailedPrecondition
from kms.identity import fingerprint
from kms.profile import StatusUrls
from kms.v1 import (
    admin_pb2_grpc,
    enrollment_pb2,
    enrollment_pb2_grpc,
    handshake_pb2,
    handshake_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    revocation_pb2,
    revocation_pb2_grpc,
)
from server.api.admin import AdminServicer
from server.api.enrollment import EnrollmentServicer
from server.api.handshake import HandshakeServicer
from server.api.identity import IdentityServicer
from server.api.keys import KeysServicer
from server.api.revocation import RevocationServicer
from server.audit.devices import AuditDevices
from server.audit.trail import AuditBatcher, AuditTrail
from server.ca.authority import CertificateAuthority
from server.ca.crl import CrlPublisher
from server.ca.ocsp import OcspResponder
from server.ca.tls import ServerTls
from server.clock import Clock, now_seconds, system_clock
from server.config import ServerConfig
from server.deployment.backup import backup
from server.deployment.datadir import DataDir
from server.deployment.deployment import Deployment, open_deployment
from server.endpoints.auth import AuthInterceptor, Limits, Listener
from server.endpoints.authn import PeerAuthenticator
from server.endpoints.enroll_port import EnrollmentPort, open_enrollment_port
from server.endpoints.failures import FailureReport
from server.endpoints.gate import raise_open_file_limit
from server.endpoints.limits import RateLimiter
from server.enrollment.agents import AgentDirectory
from server.enrollment.service import EnrollmentService
from server.exchange import ExchangeService
from server.keys import KeyService
from server.ops.expiry import WINDOWS as EXPIRY_WINDOWS
from server.ops.expiry import ExpiringCertificates
from server.ops.heap import HeapKeeper
from server.ops.http import HttpSidePort
from server.ops.metrics import Metrics
from server.revocation.feed import RevocationFeed, StreamGuard
from server.revocation.follower import EventFollower
from server.revocation.service import RevocationService
from server.revocation.watch import WatchService
from server.store import AuditEntry, Store

__all__ = ["App", "Initialized", "create_server", "initialize", "serve"]

logger = logging.getLogger(__name__)


@dataclass
class App:
    config: ServerConfig
    datadir: DataDir
    store: Store
    ca: CertificateAuthority
    api: grpc.aio.Server
    admin: grpc.aio.Server
    port: int
    enroll_port: int
    crl: CrlPublisher
    http: HttpSidePort | None
    http_port: int | None
    tls: ServerTls
    health: HealthServicer
    follower: EventFollower
    audit: AuditBatcher
    watch: WatchService
    # The enrollment port: its own gRPC server on loopback, behind the gate on the public address.
    enroll: EnrollmentPort
    failures: FailureReport
    exchanges: ExchangeService | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The event follower: it ends only when the shared log was rewritten (the server must stop).
    following: asyncio.Task[None] | None = None
    devices: AuditDevices | None = None  # closed after the store, which hands them its last records

    @property
    def address(self) -> str:
        return join_hostport(self.config.listen_host, self.port)

    @property
    def enroll_address(self) -> str:
        return join_hostport(self.config.enroll_host, self.enroll_port)

    @property
    def http_address(self) -> str | None:
        if self.http_port is None or self.config.http_host is None:
            return None
        return join_hostport(self.config.http_host, self.http_port)

    def ready_line(self) -> str:
        line = (
            f"kms-server ready address={self.address} ca-fingerprint={self.ca.fingerprint}"
            f" admin-socket={self.datadir.admin_socket} enroll-address={self.enroll_address}"
        )
        return line + (f" http-address={self.http_address}" if self.http_address else "")

    async def start(self) -> None:
        await self.api.start()
        await self.enroll.start()
        await self.admin.start()
        for service in _HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.following = asyncio.create_task(self.follower.run())
        self._tasks = [
            asyncio.create_task(self.crl.refresh_forever()),
            asyncio.create_task(self.tls.rotate_forever()),
            asyncio.create_task(HeapKeeper().run_forever()),
            asyncio.create_task(self.failures.run_forever()),
            self.following,
        ]

    async def stop(self) -> None:
        """Graceful: refuse new calls, let in-flight ones finish within the grace period."""
        grace = self.config.shutdown_grace.total_seconds()
        await self.health.enter_graceful_shutdown()  # load balancers stop sending new calls
        for task in self._tasks:
            task.cancel()
        if self.http is not None:
            await self.http.stop()
        await asyncio.gather(self.api.stop(grace), self.enroll.stop(grace), self.admin.stop(grace))
        self.watch.close()  # after the grace: streams still open in it get their heartbeats
        self.failures.close_interval()  # the last refusals' audit records join the final flush
        if self.exchanges is not None:
            self.exchanges.close()
        try:  # bounded: a store that refuses writes must not hold the stop past a supervisor's patience
            await asyncio.wait_for(self.audit.flush(), AUDIT_FLUSH_AT_STOP)
        except TimeoutError:
            logger.error("stopping with audit records unwritten", extra={"records": self.audit.pending})
        await self.store.close()
        if self.devices is not None:
            self.devices.close()
        self.datadir.admin_socket.unlink(missing_ok=True)
        self.datadir.release()


# How long a stop waits for batched audit records (exchanges) to be written.
AUDIT_FLUSH_AT_STOP = 10.0

_HEALTH_SERVICES = ("", "kms.v1.Keys", "kms.v1.Enrollment", "kms.v1.Revocation")


def _health_follows_store(health: HealthServicer) -> Callable[[bool], None]:
    """Reports NOT_SERVING while the store is unreachable, so load balancers send calls elsewhere."""
    status = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING}
    tasks: set[asyncio.Task[None]] = set()
    last: list[bool] = [True]

    def connected(up: bool) -> None:
        if up == last[0]:
            return
        last[0] = up
        logger.warning("store reachable again" if up else "store unreachable: health is NOT_SERVING")

        async def set_all() -> None:
            for service in _HEALTH_SERVICES:
                await health.set(service, status[up])

        task = asyncio.create_task(set_all())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return connected


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials, what: str) -> int:
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise FailedPrecondition(f"cannot listen on {address} ({what}): address in use or not available")
    return int(port)


def _bind_http(cfg: ServerConfig) -> tuple[socket.socket | None, StatusUrls | None]:
    """Binds the HTTP side port first, so issued certificates can name its real port."""
    if cfg.http_host is None:
        return None, None
    family = socket.AF_INET6 if ":" in cfg.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((cfg.http_host, cfg.http_port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise FailedPrecondition(
            f"cannot listen on {cfg.http_host}:{cfg.http_port} (--http-listen): {exc.strerror}"
        ) from None
    port = sock.getsockname()[1]
    # A wildcard address is no place to send relying parties: name the server instead.
    host = cfg.sans[0] if cfg.http_host in ("0.0.0.0", "::") else cfg.http_host  # noqa: S104 - a comparison
    base = f"http://{join_hostport(host, port)}"
    return sock, StatusUrls(crl=f"{base}/crl", ocsp=f"{base}/ocsp")


async def create_server(cfg: ServerConfig, clock: Clock = system_clock) -> App:
    """Builds the whole server on cfg.data_dir and binds its listeners.

    Raises:
        FailedPrecondition: the data dir, store or a port cannot be used.
    """
    datadir = DataDir(cfg.data_dir)
    datadir.prepare()
    deployment: Deployment | None = None
    try:
        deployment = await open_deployment(cfg, datadir, clock)
        store, sealer, root, trust_domain = (
            deployment.store,
            deployment.sealer,
            deployment.root,
            deployment.trust_domain,
        )
        http_sock, status_urls = _bind_http(cfg)
        ca = CertificateAuthority(root, trust_domain, cfg.cert_ttl, clock, status_urls)
        if cfg.cert_ttl > ca.certificate.not_valid_after_utc - clock():
            logger.warning(
                "certificates will be cut short: the CA expires %s", ca.certificate.not_valid_after_utc
            )
        tls = ServerTls(datadir, sealer, ca, cfg.sans, cfg.server_cert_ttl, cfg.renew_fraction, clock)

        # The expiry gauges, kept as certificates are issued and revoked (a scrape reads no agents).
        expiring = ExpiringCertificates(store, clock)
        metrics = Metrics()
        feed = RevocationFeed(await store.last_seq(), metrics, on_publish=expiring.published)
        keys = KeyService(store, sealer, clock, publish=feed.publish)
        guard = StreamGuard()
        crl = CrlPublisher(ca, store, clock)
        revocations = RevocationService(store, feed, guard, keys, clock, on_revoked=crl.invalidate)
        await revocations.load()
        enrollment = EnrollmentService(
            store,
            ca,
            clock,
            default_token_ttl=cfg.token_ttl,
            max_token_ttl=cfg.max_token_ttl,
            on_revoked=revocations.apply_committed,
            on_issued=expiring.issued,
            renew_window=cfg.renew_window,
            log_position=lambda: feed.last_seq,
        )
        agents = AgentDirectory(store, trust_domain, clock, revocations.revocation_reason)
        health = HealthServicer()
        follower = EventFollower(store, feed, revocations.apply_remote, _health_follows_store(health))
        authenticator = PeerAuthenticator(
            ca.certificate, trust_domain, store, clock, revocations.revocation_reason
        )
        watch = WatchService(
            store, feed, cfg.heartbeat.total_seconds(), cfg.watch_buffer, follower.cut_off_for
        )
        audit = AuditBatcher(store)
        exchanges = ExchangeService(
            lambda: tls.handshake_identity,
            ca.certificate,
            trust_domain,
            audit,
            revocations,
            clock,
            cfg.handshake_timeout.total_seconds(),
            cfg.exchange_rate,
        )

        if cfg.http_host is not None:  # only /metrics reads it
            await expiring.load()
            for label, window in EXPIRY_WINDOWS:
                metrics.expiring.labels(label).set_function(partial(expiring.count, window))

        async def refresh_metrics() -> None:
            expiring.refresh()  # O(1): at most starts a background re-read, once a minute

        async def healthy() -> bool:
            try:
                await store.last_seq()
            except Exception:  # a store that cannot answer is what /healthz reports
                return False
            return True

        http = (
            HttpSidePort(crl, OcspResponder(ca, store, clock), metrics, refresh_metrics, healthy)
            if cfg.http_host is not None
            else None
        )

        limits = [
            # Without this gRPC sets SO_REUSEPORT and a second process could
            # share (and steal calls from) our port instead of failing to bind.
            ("grpc.so_reuseport", 0),
            # Find dead peers (a Listen or Watch stream whose agent vanished) within a minute.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_receive_message_length", cfg.max_request_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            # gRPC cancels new calls beyond this many not yet picked up by the
            # application (default 1,000): a fleet reconnecting its watch streams at
            # once after a restart must not be turned away in bulk.
            ("grpc.server.max_pending_requests", 20_000),
            ("grpc.server.max_pending_requests_hard_limit", 40_000),
        ]
        # gRPC holds a connection whose TLS handshake has not finished for 120 s by
        # default: an idle connect() would cost a descriptor for that long.
        handshake = [
            ("grpc.server_handshake_timeout_ms", int(cfg.tls_handshake_timeout.total_seconds() * 1000))
        ]
        failures = FailureReport(audit.add, cfg.failure_report_interval.total_seconds(), wall=clock)
        address_limits = Limits(
            RateLimiter(cfg.enroll_rate), RateLimiter(cfg.auth_failure_rate), cfg.max_streams_per_identity
        )
        api = grpc.aio.server(
            interceptors=[
                AuthInterceptor(Listener.API, authenticator, guard, metrics, address_limits, failures)
            ],
            options=limits + handshake,
        )
        enrollment_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentServicer(ca, enrollment), api)
        identity_pb2_grpc.add_IdentityServicer_to_server(IdentityServicer(ca, enrollment), api)
        keys_pb2_grpc.add_KeysServicer_to_server(KeysServicer(keys), api)
        revocation_servicer = RevocationServicer(watch, revocations, crl)
        revocation_pb2_grpc.add_RevocationServicer_to_server(revocation_servicer, api)
        handshake_pb2_grpc.add_HandshakeServicer_to_server(HandshakeServicer(exchanges), api)
        health_pb2_grpc.add_HealthServicer_to_server(health, api)
        services = [
            s.full_name
            for module in (enrollment_pb2, identity_pb2, keys_pb2, revocation_pb2, handshake_pb2)
            for s in module.DESCRIPTOR.services_by_name.values()
        ]
        reflection.enable_server_reflection(
            [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            api,
        )
        port = _bind(api, cfg.listen, tls.credentials(require_client_auth=True), "--listen")

        enroll = await open_enrollment_port(
            cfg,
            limits + handshake,
            tls.credentials(require_client_auth=False),
            enrollment=EnrollmentServicer(ca, enrollment),
            revocation=revocation_servicer,
            health=health,
            metrics=metrics,
            limits=address_limits,
            failures=failures,
        )

        async def backup_now(path: Path) -> int:
            await audit.flush()  # the snapshot holds every exchange already answered
            size = await backup(store, datadir, path)
            # The store is unchanged, but a copy of every sealed key left it: worth a record.
            await store.append_audit(AuditEntry(now_seconds(clock), "admin", "backup", f"file:{path}"))
            return size

        admin = grpc.aio.server(interceptors=[AuthInterceptor(Listener.ADMIN)], options=limits)
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(
                ca,
                enrollment,
                agents,
                keys,
                revocations,
                AuditTrail(store, audit, deployment.audit_key),
                backup_now,
            ),
            admin,
        )
        datadir.admin_socket.unlink(missing_ok=True)  # stale: we hold the data dir lock
        _bind(
            admin,
            f"unix:{datadir.admin_socket}",
            grpc.local_server_credentials(grpc.LocalConnectionType.UDS),
            "admin socket",
        )
        os.chmod(datadir.admin_socket, 0o600)
        http_port = await http.start(http_sock) if http and http_sock else None
        return App(
            cfg,
            datadir,
            store,
            ca,
            api,
            admin,
            port,
            enroll.port,
            crl,
            http,
            http_port,
            tls,
            health,
            follower,
            audit,
            watch,
            enroll,
            failures,
            exchanges=exchanges,
            devices=deployment.devices,
        )
    except BaseException:
        if deployment is not None:
            await deployment.close()
        datadir.release()
        raise


@dataclass(frozen=True)
class Initialized:
    trust_domain: str
    fingerprint: str
    created: bool


async def initialize(cfg: ServerConfig, clock: Clock = system_clock) -> Initialized:
    """Creates the deployment's CA and master key if they do not exist yet (kms-server init)."""
    datadir = DataDir(cfg.data_dir)
    datadir.prepare()
    try:
        deployment = await open_deployment(cfg, datadir, clock)
        await deployment.close()
    finally:
        datadir.release()
    der = deployment.root.cert.public_bytes(Encoding.DER)
    return Initialized(deployment.trust_domain, fingerprint(der), deployment.created)


async def serve(cfg: ServerConfig, clock: Clock = system_clock) -> int:
    """Runs kms-server until SIGTERM or SIGINT (exit status 0), or until the shared event
    log turns out rewritten (1), then stops gracefully."""
    if cfg.log_format == "json":
        use_json_logs()
    raise_open_file_limit()
    app = await create_server(cfg, clock)
    await app.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(app.ready_line(), flush=True)
    logger.info("serving", extra={"address": app.address, "enroll_address": app.enroll_address})
    signalled = asyncio.create_task(stopping.wait())
    assert app.following is not None
    await asyncio.wait({signalled, app.following}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    failure = None if app.following.cancelled() or not app.following.done() else app.following.exception()
    if failure is not None:
        logger.critical("stopping: %s", failure)
    else:
        logger.info("stopping")
    await app.stop()
    print("kms-server stopped", file=sys.stderr, flush=True)
    return 1 if failure is not None else 0
