"""Revoking certificates, agents and key versions, and telling everyone at once.

Each revocation is one store transaction (state change + event), durable
before the call returns; then the event is published to watchers, the
revoked identity's open streams are closed, and the CRL is reissued.
Revoking something already revoked changes nothing and returns the event
that revoked it, with one exception: a hold (certificateHold, RFC 5280 §5.3.1)
is the one revocation that a release lifts, and that a final reason replaces.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from kms.errors import InvalidArgument, NotFound
from kms.events import NOT_REVOCATIONS
from kms.identity import validate_agent_name, validate_key_name
from kms.revocation import parse_reason
from server.clock import Clock, now_seconds
from server.keys import MAX_VERSION, KeyService
from server.revocation.feed import RevocationFeed, StreamGuard
from server.revocation.states import REVOCATION_KINDS, Entry, entries
from server.store import AuditEntry, CertificateRecord, RevocationEvent, Store, rules
from server.store.completion import after_commit

# RevocationEvent is what RevocationService answers with: re-exported so server/api needs no store import.
__all__ = ["CertificateStatus", "Revocation", "RevocationEvent", "RevocationService", "normalize_serial"]

logger = logging.getLogger(__name__)

_SERIAL = re.compile(r"^[0-9a-f]{1,40}$")
# Streams of a revoked identity close this long after the event is published,
# which gives its own Watch stream the time to deliver the event first.
CLOSE_GRACE = 0.3


def normalize_serial(text: str) -> str:
    """Lowercase hex without colons or leading zeros, as the store keeps serials. Raises InvalidArgument."""
    body = text.strip().lower().replace(":", "")
    body = body.removeprefix("0x")
    if not _SERIAL.fullmatch(body):
        raise InvalidArgument(f"serial {text!r} is not a hexadecimal certificate serial (up to 20 bytes)")
    return body.lstrip("0") or "0"


@dataclass(frozen=True)
class Revocation:
    event: RevocationEvent
    already_revoked: bool
    # keyCompromise of a certificate: the certificates renewed from it, revoked with it.
    cascaded: tuple[RevocationEvent, ...] = ()


@dataclass(frozen=True)
class CertificateStatus:
    serial: str
    status: str  # "good", "revoked" or "unknown"
    record: CertificateRecord | None


class RevocationService:
    def __init__(
        self,
        store: Store,
        feed: RevocationFeed,
        guard: StreamGuard,
        keys: KeyService,
        clock: Clock,
        on_revoked: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._feed = feed
        self._guard = guard
        self._keys = keys
        self._clock = clock
        self._on_revoked = on_revoked
        # Told of each event this server commits, before it is applied (server/workers/link.py).
        self.committed_here: Callable[[int], None] = lambda _seq: None
        # Revoked serials and their reasons: the per-call check of every caller and of
        # handshake peers reads this, not the store.
        self._revoked: dict[str, str] = {}

    async def load(self) -> None:
        """Reads the revoked serials once at start; revocations keep the map current."""
        self._revoked = {
            r.serial: r.revocation_reason or "unspecified" for r in await self._store.revoked_certificates()
        }

    def is_revoked(self, serial: str) -> bool:
        return serial in self._revoked

    def revocation_reason(self, serial: str) -> str | None:
        """The reason serial was revoked, or None while it is not."""
        return self._revoked.get(serial)

    def _now(self) -> int:
        return now_seconds(self._clock)

    def _committed(self, event: RevocationEvent | None) -> Revocation | None:
        """Applies a revocation this server committed in memory (None: nothing was revoked)."""
        if event is None:
            return None
        self.committed_here(event.seq)
        return self._apply(event)

    def _apply(self, event: RevocationEvent) -> Revocation:
        """Applies a committed revocation, this server's or another's, in memory."""
        if self._feed.has_published(event.seq):
            # Applied already: another path (the follower, reading the shared log) got here first.
            return Revocation(event, already_revoked=False)
        if event.kind in ("cert", "agent"):
            self._revoked.update(dict.fromkeys(event.serials(), event.reason))
        elif event.kind == "release":  # before the event goes out: a watcher told may call at once
            for serial in event.serials():
                self._revoked.pop(serial, None)
        self._feed.publish(event)
        closed = self._guard.close(event, CLOSE_GRACE)
        self._on_revoked()
        logger.info(
            "released" if event.kind == "release" else "revoked",
            extra={
                "seq": event.seq,
                "kind": event.kind,
                "serial": event.serial,
                "agent": event.agent_name,
                "key": event.key_name,
                "version": event.key_version,
                "reason": event.reason,
                "streams_closed": closed,
            },
        )
        return Revocation(event, already_revoked=False)

    def apply_committed(self, event: RevocationEvent) -> None:
        """Applies a revocation another service of this server committed (a certificate
        superseded by a --replace enrollment): the map, the feed, open streams, the CRL."""
        self._committed(event)

    def apply_remote(self, event: RevocationEvent) -> None:
        """Applies an event another replica committed, as if it had been made here."""
        if event.kind in NOT_REVOCATIONS:  # news for key holders, nothing revoked
            self._feed.publish(event)
            return
        if event.kind == "key" and event.key_name is not None and event.key_version is not None:
            self._keys.forget_wrapped(event.key_name, event.key_version)
        self._apply(event)

    async def _already(self, **subject: object) -> Revocation:
        earlier = await self._store.last_event(**subject)  # type: ignore[arg-type]
        if earlier is None:  # revoked through another path (e.g. destroyed key): nothing to add
            raise NotFound("already revoked, but no event records it")
        if earlier.kind in ("cert", "agent"):  # idempotent: the map holds it already, or now does
            self._revoked.update(dict.fromkeys(earlier.serials(), earlier.reason))
        return Revocation(earlier, already_revoked=True)

    async def revoke_certificate(self, serial: str, reason: str) -> Revocation:
        """Revokes one certificate; for keyCompromise, also every certificate renewed from it.

        A stolen key renews as easily as its owner does: the certificates renewed
        from a compromised one are its thief's as much as its owner's. They are
        revoked in the same transaction, each with its own event, even when the
        certificate itself was revoked already (for a lesser reason, say).
        """
        serial, reason = normalize_serial(serial), parse_reason(reason, allow_hold=True)
        now = self._now()
        if reason != "keyCompromise":
            write = self._store.revoke_certificate(
                serial,
                reason,
                now,
                audit=AuditEntry(now, "admin", "revoke.cert", f"serial:{serial} reason:{reason}"),
            )
            done = await after_commit(write, self._committed)
            return done or await self._already(kind="cert", serial=serial)

        def audit(events: list[RevocationEvent]) -> AuditEntry:
            renewed = [e.serial for e in events if e.serial != serial]
            also = f" renewed:{','.join(s for s in renewed if s)}" if renewed else ""
            return AuditEntry(now, "admin", "revoke.cert", f"serial:{serial} reason:{reason}{also}")

        def committed(events: list[RevocationEvent] | None) -> list[RevocationEvent]:
            for event in events or ():
                self._committed(event)
            return events or []

        events = await after_commit(self._store.revoke_lineage(serial, reason, now, audit=audit), committed)
        cascaded = tuple(e for e in events if e.serial != serial)
        if events and events[0].serial == serial:
            return Revocation(events[0], already_revoked=False, cascaded=cascaded)
        earlier = await self._already(kind="cert", serial=serial)
        return Revocation(earlier.event, already_revoked=True, cascaded=cascaded)

    async def revoke_agent(self, name: str, reason: str) -> Revocation:
        name, reason = validate_agent_name(name), parse_reason(reason, allow_hold=True)
        now = self._now()

        write = self._store.revoke_agent(
            name, reason, now, audit=AuditEntry(now, "admin", "revoke.agent", f"agent:{name} reason:{reason}")
        )
        done = await after_commit(write, self._committed)
        return done or await self._already(kind="agent", agent=name)

    async def release_certificate(self, serial: str) -> Revocation:
        """Lifts a certificate's hold: it works again, and drops out of the next CRL.

        Raises:
            NotFound: no such certificate.
            FailedPrecondition: it is not held (in force, released already, or revoked for good).
        """
        serial = normalize_serial(serial)
        now = self._now()
        audit = AuditEntry(now, "admin", "release.cert", f"serial:{serial}")
        event = await after_commit(self._store.release_certificate(serial, now, audit=audit), self._released)
        return Revocation(event, already_revoked=False)

    async def release_agent(self, name: str) -> Revocation:
        """Lifts what the agent's newest hold still holds (never a certificate revoked for good since).

        Raises:
            NotFound: no such agent.
            FailedPrecondition: the agent is not held (never was, released already, or revoked for good).
        """
        name = validate_agent_name(name)
        now = self._now()

        def audit(event: RevocationEvent) -> AuditEntry:
            return AuditEntry(now, "admin", "release.agent", f"agent:{name} serials:{event.serial}")

        event = await after_commit(self._store.release_agent(name, now, audit=audit), self._released)
        return Revocation(event, already_revoked=False)

    def _released(self, event: RevocationEvent) -> RevocationEvent:
        self._committed(event)
        return event

    async def revoke_key(self, name: str, version: int, reason: str) -> Revocation:
        name, reason = validate_key_name(name), parse_reason(reason)
        if not 1 <= version <= MAX_VERSION:
            raise InvalidArgument(f"--version {version} is out of range: use a positive version")

        def committed(event: RevocationEvent | None) -> Revocation | None:
            if event is not None:
                self._keys.forget_wrapped(name, version)
            return self._committed(event)

        # Made before the transaction (a key pair's generation is slow), used only if the
        # version is current and must be replaced. No key: the store's answer for no version.
        try:
            seal = await self._keys.make_sealer(name)
        except NotFound:
            raise rules.no_version(name, version) from None
        now = self._now()

        def audit(done: tuple[RevocationEvent, int | None]) -> list[AuditEntry]:
            entries = [AuditEntry(now, "admin", "revoke.key", f"key:{name}/v{version} reason:{reason}")]
            if done[1] is not None:  # it was current: a new current version replaced it
                entries.append(
                    AuditEntry(now, "admin", "key.rotate", f"key:{name}/v{done[1]} replaces:v{version}")
                )
            return entries

        write = self._store.revoke_key_version(name, version, reason, now, seal, audit=audit)
        done = await after_commit(write, committed)
        return done or await self._already(kind="key", key=(name, version))

    async def events(self) -> list[RevocationEvent]:
        """Every revocation so far (rotations, disables, enables and releases share the log and the feed, but are not revocations)."""
        return [e for e in await self._log() if e.kind in REVOCATION_KINDS]

    async def entries(self, *, active: bool = False) -> list[Entry]:
        """Every revocation and whether it is in force or was released (active: only those in force)."""
        return entries(await self._log(), active=active)

    async def _log(self) -> list[RevocationEvent]:
        out: list[RevocationEvent] = []
        after = 0
        while batch := await self._store.events_after(after, 1000):
            out += batch
            after = batch[-1].seq
        return out

    async def status(self, serial: str) -> CertificateStatus:
        serial = normalize_serial(serial)
        record = await self._store.get_certificate(serial)
        if record is None:
            return CertificateStatus(serial, "unknown", None)
        return CertificateStatus(serial, "revoked" if record.revoked_at is not None else "good", record)
