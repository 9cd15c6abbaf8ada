"""The domain graph: store -> CA -> domain services, built once by create_server (STYLE 3).

Each service takes what it needs through its constructor; `Services` holds
them by name, so the servers (server/listeners.py) and App (server/app.py) are
handed one object instead of twenty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kms.profile import StatusUrls
from server.api.health import HealthBoard, StoreHealth
from server.audit.trail import AuditBatcher, AuditTrail
from server.ca.authority import CertificateAuthority
from server.ca.crl import CrlPublisher
from server.ca.generation_keys import TokenAccess
from server.ca.retire import CARetirement
from server.ca.rotation import CARotation
from server.ca.tls import ServerTls
from server.ca.trust import CATrust
from server.clock import Clock, now_seconds
from server.config import ServerConfig
from server.deployment.backup import backup
from server.deployment.datadir import DataDir
from server.deployment.deployment import Deployment
from server.endpoints.auth import Limits
from server.endpoints.authn import PeerAuthenticator
from server.endpoints.failures import FailureReport
from server.endpoints.limits import RateLimiter
from server.enrollment.agents import AgentDirectory
from server.enrollment.service import EnrollmentService
from server.exchange import ExchangeService
from server.keys import KeyService
from server.keys.scheduler import KeyScheduler
from server.ops.expiry import ExpiringCertificates
from server.ops.journal import Journal
from server.ops.metrics import Metrics
from server.ops.observe import Observer
from server.ops.rates import Rates
from server.ops.roster import Roster
from server.revocation.feed import RevocationFeed, StreamGuard
from server.revocation.follower import EventFollower
from server.revocation.service import RevocationService
from server.revocation.watch import WatchService
from server.store import AuditEntry, CertificateRecord, RevocationEvent, Store
from server.workers.link import WorkerLink

__all__ = ["Services", "open_services"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    """Everything behind the ports: the store, the CA, the domain services and their guards."""

    clock: Clock
    store: Store
    ca: CertificateAuthority
    tls: ServerTls
    metrics: Metrics
    expiring: ExpiringCertificates
    feed: RevocationFeed
    guard: StreamGuard
    keys: KeyService
    crl: CrlPublisher
    revocations: RevocationService
    enrollment: EnrollmentService
    agents: AgentDirectory
    health: HealthBoard
    follower: EventFollower
    authenticator: PeerAuthenticator
    watch: WatchService
    audit: AuditBatcher
    trail: AuditTrail
    exchanges: ExchangeService
    # Per peer address: refused anonymous attempts, and the periodic report of them.
    limits: Limits
    failures: FailureReport
    # Scheduled rotations, expiries and expiry warnings.
    scheduler: KeyScheduler
    # What `kms-server top` shows (the Monitor service, on the admin socket).
    observer: Observer
    # The CA's generations: preparing the next, the trust bundle, retiring replaced ones (issue 19).
    ca_rotation: CARotation
    ca_trust: CATrust
    ca_retirement: CARetirement
    # One worker's link to the others (server/workers/); None: the server is one process.
    link: WorkerLink | None = None


async def open_services(
    cfg: ServerConfig,
    deployment: Deployment,
    datadir: DataDir,
    clock: Clock,
    status_urls: StatusUrls | None,
    link: WorkerLink | None = None,
) -> Services:
    """Builds the domain graph on the deployment's store, sealer and root CA key (link: server/workers/)."""
    store, trust_domain = deployment.store, deployment.trust_domain
    ca = _authority(cfg, deployment, clock, status_urls)
    # The expiry gauges, kept as certificates are issued and revoked (a scrape reads no agents).
    expiring = ExpiringCertificates(store, clock)
    metrics, journal = Metrics(), Journal()
    trust = CATrust(store, ca, deployment.sealer, _token(cfg))
    on_publish = _each(expiring.published, journal.published, trust.published)
    events = _CAEvents(feed := RevocationFeed(await store.last_seq(), metrics, on_publish=on_publish))
    events.here = link.committed if link is not None else events.here
    rotation, retirement, tls = await _generations(cfg, deployment, datadir, ca, clock, events, trust, link)
    keys = _keys(cfg, deployment, clock, _here(feed.publish, link), schedule_changed := asyncio.Event())
    guard, health, audit = StreamGuard(), HealthBoard(), AuditBatcher(store)
    crl = CrlPublisher(ca, store, clock, trust=trust)
    revocations = RevocationService(store, feed, guard, keys, clock, on_revoked=crl.invalidate)
    await revocations.load()
    events.revocations = revocations
    follower = _follower(store, feed, revocations, health, link)
    roster = Roster(store, reason := revocations.revocation_reason)
    authenticator = PeerAuthenticator(ca.certificate, trust_domain, store, clock, reason)
    issued = _each(expiring.issued, journal.issued, roster.issued)
    trust.listen(authenticator.trust, tls.trust_clients)
    return Services(
        clock=clock,
        store=store,
        ca=ca,
        tls=tls,
        metrics=metrics,
        expiring=expiring,
        feed=feed,
        guard=guard,
        keys=keys,
        crl=crl,
        revocations=revocations,
        enrollment=_enrollment(cfg, store, ca, clock, revocations, issued, feed),
        agents=AgentDirectory(store, trust_domain, clock, reason),
        health=health,
        follower=follower,
        authenticator=authenticator,
        watch=_watch(cfg, store, feed, follower),
        audit=audit,
        trail=AuditTrail(store, audit, deployment.audit_key),
        exchanges=_exchanges(cfg, ca, tls, trust_domain, audit, revocations, clock, trust, link),
        limits=_limits(cfg),
        failures=FailureReport(audit.add, cfg.failure_report_interval.total_seconds(), wall=clock),
        scheduler=_scheduler(cfg, store, keys, clock, _here(feed.publish, link), schedule_changed),
        observer=_observer(store, roster, journal, keys, guard, metrics, clock, authenticator),
        ca_rotation=rotation,
        ca_trust=trust,
        ca_retirement=retirement,
        link=link,
    )


async def _generations(
    cfg: ServerConfig,
    deployment: Deployment,
    datadir: DataDir,
    ca: CertificateAuthority,
    clock: Clock,
    events: _CAEvents,
    trust: CATrust,
    link: WorkerLink | None,
) -> tuple[CARotation, CARetirement, ServerTls]:
    """The CA's generations, the deployment's CA adopted as the first (once), the ones trusted, and
    the store's active one followed; then the server's TLS identity. The active CA is followed
    before the TLS certificate is loaded or issued: a replica restarted after an activation serves
    one from the active CA from its first handshake (later switches reissue it)."""
    tls: list[ServerTls] = []

    async def reissue() -> None:
        for each in tls:  # none yet at start: it is built after, from the active CA
            await each.reissue()

    retirement = CARetirement(deployment.store, clock, _here(events.feed.publish, link))
    trust.on_bundle(retirement.heard)  # an activation on another replica: its timer set at once

    rotation = CARotation(
        deployment.store,
        ca,
        trust,
        deployment.sealer,
        clock,
        cfg.ca_ttl,
        cfg.ca_key,
        events,
        cfg.ca_propagation,
        reissue,
        retirement.wake,
        trust.token,
    )
    await rotation.adopt()
    # Of several workers, the primary issues the TLS identity and the others load what it wrote.
    issues = link is None or link.role.primary
    server_tls = ServerTls(
        datadir,
        deployment.sealer,
        ca,
        cfg.sans,
        cfg.server_cert_ttl,
        cfg.renew_fraction,
        clock,
        issues=issues,
    )
    if link is not None:
        if issues:
            server_tls.on_rotated = lambda: link.cast("tls")
        else:
            link.on_cast("tls", lambda _message: server_tls.changed.set())
    tls.append(server_tls)
    return rotation, retirement, server_tls


def _observer(
    store: Store,
    roster: Roster,
    journal: Journal,
    keys: KeyService,
    guard: StreamGuard,
    metrics: Metrics,
    clock: Clock,
    authenticator: PeerAuthenticator,
) -> Observer:
    return Observer(store, roster, journal, keys, guard, Rates(metrics), clock, authenticator.last_seen)


def _here(publish: Callable[[RevocationEvent], T], link: WorkerLink | None) -> Callable[[RevocationEvent], T]:
    """publish, for events this server commits: each is noted to the other workers first (link)."""
    return publish if link is None else link.local(publish)


def _watch(cfg: ServerConfig, store: Store, feed: RevocationFeed, follower: EventFollower) -> WatchService:
    return WatchService(store, feed, cfg.heartbeat.total_seconds(), cfg.watch_buffer, follower.cut_off_for)


def _scheduler(
    cfg: ServerConfig,
    store: Store,
    keys: KeyService,
    clock: Clock,
    publish: Callable[[RevocationEvent], object],
    changed: asyncio.Event,
) -> KeyScheduler:
    return KeyScheduler(store, keys, clock, publish, cfg.key_schedule_poll.total_seconds(), changed)


def _follower(
    store: Store,
    feed: RevocationFeed,
    revocations: RevocationService,
    health: HealthBoard,
    link: WorkerLink | None,
) -> EventFollower:
    """What reads the events other replicas (and other workers: link) commit, and applies them here."""
    follower = EventFollower(store, feed, revocations.apply_remote, StoreHealth(health))
    if link is not None:
        link.follow(follower)
        revocations.committed_here = link.committed
    return follower


def _token(cfg: ServerConfig) -> TokenAccess | None:
    """How to reach the CA keys' PKCS#11 token (--ca-key); None: the keys are in software."""
    return None if cfg.ca_key is None else TokenAccess(cfg.ca_key, cfg.pkcs11_module, cfg.pkcs11_pin_file)


class _CAEvents:
    """A CA rotation's events: 'bundle' ones go to watchers; the revocations of an emergency
    rotation (--revoke-old) are applied as every revocation is (the map, open streams, the CRL),
    by the RevocationService, which is built after the rotation (it is set here then)."""

    def __init__(self, feed: RevocationFeed) -> None:
        self.feed = feed
        self.revocations: RevocationService | None = None
        self.here: Callable[[int], None] = lambda _seq: None  # a worker's link.committed

    def __call__(self, event: RevocationEvent) -> None:
        if event.kind == "bundle":
            self.here(event.seq)
            self.feed.publish(event)
        elif self.revocations is None:  # never at run time: the server serves once wiring is done
            raise RuntimeError("a revocation before the revocation service exists")
        else:
            self.revocations.apply_committed(event)


def _limits(cfg: ServerConfig) -> Limits:
    return Limits(
        RateLimiter(cfg.enroll_rate), RateLimiter(cfg.auth_failure_rate), cfg.max_streams_per_identity
    )


def _each(*calls: Callable[[T], None]) -> Callable[[T], None]:
    """One callback that makes each call in turn (one event, several listeners)."""

    def each(value: T) -> None:
        for call in calls:
            call(value)

    return each


def _keys(
    cfg: ServerConfig,
    deployment: Deployment,
    clock: Clock,
    publish: Callable[[RevocationEvent], object],
    schedule_changed: asyncio.Event,
) -> KeyService:
    return KeyService(
        deployment.store,
        deployment.sealer,
        clock,
        publish=publish,
        schedule_changed=schedule_changed.set,
        min_rotation_period=int(cfg.min_rotation_period.total_seconds()),
    )


def _authority(
    cfg: ServerConfig, deployment: Deployment, clock: Clock, status_urls: StatusUrls | None
) -> CertificateAuthority:
    ca = CertificateAuthority(deployment.root, deployment.trust_domain, cfg.cert_ttl, clock, status_urls)
    if cfg.cert_ttl > ca.certificate.not_valid_after_utc - clock():
        logger.warning(
            "certificates will be cut short: the CA expires %s", ca.certificate.not_valid_after_utc
        )
    return ca


def _enrollment(
    cfg: ServerConfig,
    store: Store,
    ca: CertificateAuthority,
    clock: Clock,
    revocations: RevocationService,
    issued: Callable[[CertificateRecord], None],
    feed: RevocationFeed,
) -> EnrollmentService:
    return EnrollmentService(
        store,
        ca,
        clock,
        default_token_ttl=cfg.token_ttl,
        max_token_ttl=cfg.max_token_ttl,
        on_revoked=revocations.apply_committed,
        on_issued=issued,
        renew_window=cfg.renew_window,
        log_position=lambda: feed.last_seq,
    )


def _exchanges(
    cfg: ServerConfig,
    ca: CertificateAuthority,
    tls: ServerTls,
    trust_domain: str,
    audit: AuditBatcher,
    revocations: RevocationService,
    clock: Clock,
    trust: CATrust,
    link: WorkerLink | None,
) -> ExchangeService:
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
    trust.listen(exchanges.trust)
    if link is not None:  # agents listening on other workers (server/exchange_relay.py)
        exchanges.relay_through(link)
    return exchanges


@dataclass(frozen=True)
class Backup:
    """The admin Backup call: the store's snapshot, with every exchange already answered in it."""

    store: Store
    audit: AuditBatcher
    datadir: DataDir
    clock: Clock

    async def __call__(self, path: Path) -> int:
        await self.audit.flush()  # the snapshot holds every exchange already answered
        size = await backup(self.store, self.datadir, path)
        # The store is unchanged, but a copy of every sealed key left it: worth a record.
        await self.store.append_audit(AuditEntry(now_seconds(self.clock), "admin", "backup", f"file:{path}"))
        return size
