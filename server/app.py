"""The composition root: config -> data dir -> store -> CA -> services -> gRPC servers.

``create_server`` builds everything and binds the ports but serves nothing
until ``start``; ``serve`` runs it until SIGTERM/SIGINT. Tests build the same
graph on a temp dir and port 0. The steps live beside it: the deployment
(server/deployment/), the domain graph (server/wiring.py), the listeners
(server/listeners.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding
from grpc_health.v1 import health_pb2

from kms.addresses import join_hostport
from kms.cli import use_json_logs
from kms.identity import fingerprint
from server.audit.devices import AuditDevices
from server.ca.autorotate import AutoRotation
from server.clock import Clock, system_clock
from server.config import ServerConfig
from server.deployment.datadir import DataDir
from server.deployment.deployment import Deployment, open_deployment
from server.endpoints.gate import raise_open_file_limit
from server.listeners import Listeners, bind_http, open_listeners
from server.ops.heap import HeapKeeper
from server.ports import check_ports
from server.store import Store
from server.wiring import Backup, Services, open_services

if TYPE_CHECKING:
    from server.ca.hsm import HsmKey, PendingKey
    from server.workers.link import WorkerLink, WorkerRole

__all__ = ["App", "Initialized", "create_server", "initialize", "serve"]

logger = logging.getLogger(__name__)

# How long a stop waits for batched audit records (exchanges) to be written.
AUDIT_FLUSH_AT_STOP = 10.0


@dataclass
class App:
    """A built server: its config and data dir, the domain graph, and the bound listeners."""

    config: ServerConfig
    datadir: DataDir
    services: Services
    listeners: Listeners
    devices: AuditDevices | None = None  # closed after the store, which hands them its last records
    hsm: HsmKey | PendingKey | None = None  # the CA key's token session (--ca-key), closed at stop
    # The event follower: it ends only when the shared log was rewritten (the server must stop).
    following: asyncio.Task[None] | None = None
    role: WorkerRole | None = None  # None: the one process; else which worker (server/workers/)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def address(self) -> str:
        return join_hostport(self.config.listen_host, self.listeners.port)

    @property
    def enroll_address(self) -> str:
        return join_hostport(self.config.enroll_host, self.listeners.enroll.port)

    @property
    def http_address(self) -> str | None:
        if self.listeners.http_port is None or self.config.http_host is None:
            return None
        return join_hostport(self.config.http_host, self.listeners.http_port)

    def ready_line(self) -> str:
        line = (
            f"kms-server ready address={self.address} ca-fingerprint={self.services.ca.fingerprint}"
            f" admin-socket={self.datadir.admin_socket} enroll-address={self.enroll_address}"
        )
        return line + (f" http-address={self.http_address}" if self.http_address else "")

    async def start(self) -> None:
        s = self.services
        await self.listeners.start()
        await s.health.set_all(health_pb2.HealthCheckResponse.SERVING)  # every service a port registered
        self.following = asyncio.create_task(s.follower.run())
        self._tasks = [
            asyncio.create_task(s.crl.refresh_forever()),
            asyncio.create_task(HeapKeeper().run_forever()),
            asyncio.create_task(s.failures.run_forever()),
            self.following,
        ]
        if self.role is not None and not self.role.primary:
            # The primary issues the TLS identity; this worker serves what it wrote (server/workers/).
            self._tasks.append(asyncio.create_task(s.tls.follow_forever()))
            return
        self._tasks += [
            asyncio.create_task(s.tls.rotate_forever()),
            asyncio.create_task(s.ca_retirement.run_forever()),
            asyncio.create_task(s.scheduler.run_forever()),
        ]
        if self.config.ca_rotate_at is not None:
            auto = AutoRotation(
                s.ca_rotation,
                self.config.ca_rotate_at,
                self.config.ca_propagation,
                s.clock,
            )
            self._tasks.append(asyncio.create_task(auto.run_forever()))

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: refuse new calls, let in-flight ones finish within the grace period (grace:
        shutdown_grace unless given; 0 ends every call and stream now)."""
        s = self.services
        await s.health.enter_graceful_shutdown()  # load balancers stop sending new calls
        for task in self._tasks:
            task.cancel()
        await self.listeners.stop(self.config.shutdown_grace.total_seconds() if grace is None else grace)
        s.watch.close()  # after the grace: streams still open in it get their heartbeats
        s.failures.close_interval()  # the last refusals' audit records join the final flush
        s.exchanges.close()
        try:  # bounded: a store that refuses writes must not hold the stop past a supervisor's patience
            await asyncio.wait_for(s.audit.flush(), AUDIT_FLUSH_AT_STOP)
        except TimeoutError:
            logger.error("stopping with audit records unwritten", extra={"records": s.audit.pending})
        await s.store.close()
        if self.devices is not None:
            self.devices.close()
        if self.hsm is not None:
            self.hsm.close()
        if self.listeners.admin is not None:
            self.datadir.admin_socket.unlink(missing_ok=True)
        self.datadir.release()


async def create_server(
    cfg: ServerConfig, clock: Clock = system_clock, link: WorkerLink | None = None
) -> App:
    """Builds the whole server on cfg.data_dir and binds its listeners (link: as one worker of
    several, server/workers/; its supervisor checked the ports and holds the data dir lock).

    Raises:
        FailedPrecondition: the data dir, store or a port cannot be used.
    """
    role = None if link is None else link.role
    if role is None:
        check_ports(cfg)  # before the data dir, the CA or the store: a taken port creates nothing
    hsm = _open_hsm(cfg, pending=False)  # likewise: a token that cannot be used creates nothing
    datadir = DataDir(cfg.data_dir)
    datadir.prepare(lock=role is None)
    deployment: Deployment | None = None
    try:
        deployment = await open_deployment(cfg, datadir, clock, hsm)
        # First: certificates name its real port. Of several workers, the primary serves it.
        http_sock, status_urls = bind_http(cfg, serve=role is None or role.primary, shared=role is not None)
        services = await open_services(cfg, deployment, datadir, clock, status_urls, link)
        backup = Backup(services.store, services.audit, datadir, clock)
        listeners = await open_listeners(cfg, datadir, services, backup, http_sock, role)
        app = App(cfg, datadir, services, listeners, devices=deployment.devices, hsm=hsm)
        app.role = role
        return app
    except BaseException:
        if deployment is not None:
            await deployment.close()
        datadir.release()
        if hsm is not None:
            hsm.close()
        raise


def _open_hsm(cfg: ServerConfig, *, pending: bool) -> HsmKey | PendingKey | None:
    if cfg.ca_key is None:
        return None
    from server.ca.hsm import open_configured  # only with --ca-key: python-pkcs11 is not needed otherwise

    return open_configured(cfg.ca_key, cfg.pkcs11_module, cfg.pkcs11_pin_file, pending=pending)


@dataclass(frozen=True)
class Initialized:
    trust_domain: str
    fingerprint: str
    created: bool


async def initialize(cfg: ServerConfig, clock: Clock = system_clock) -> Initialized:
    """Creates the deployment's CA and master key if they do not exist yet (kms-server init).

    With --ca-key, a key missing from the token is generated there (--ca-key-type), one there is
    used; it is generated only for a new deployment, once every check passed.
    """
    hsm = _open_hsm(cfg, pending=True)
    datadir = DataDir(cfg.data_dir)
    try:
        datadir.prepare()
        deployment = await open_deployment(cfg, datadir, clock, hsm)
        await deployment.close()
    finally:
        datadir.release()
        if hsm is not None:
            hsm.close()
    der = deployment.root.cert.public_bytes(Encoding.DER)
    return Initialized(deployment.trust_domain, fingerprint(der), deployment.created)


async def serve(cfg: ServerConfig, argv: list[str], clock: Clock = system_clock) -> int:
    """Runs kms-server until SIGTERM or SIGINT (exit status 0), or until the shared event
    log turns out rewritten (1), then stops gracefully. With --workers N > 1 this process
    supervises N workers (server/workers/), each of which runs serve_worker.

    Args:
        argv: the command line after the program name, which the workers are started with.
    """
    if cfg.log_format == "json":
        use_json_logs()
    check_ports(cfg)  # also in create_server; here first, so a taken port is the only line
    raise_open_file_limit()
    if cfg.workers > 1:
        from server.workers.supervisor import supervise

        return await supervise(cfg, argv)
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
