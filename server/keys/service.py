"""The key distributor: named keys (AES-256, or key pairs) with versions and grants, made,
rotated, disabled and destroyed by administrators; what agents ask of them is release.py's.

Material (material.py; key pairs: pairs.py) is sealed at rest and leaves the
server only wrapped for the certificate that asked. A key's type never changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from kms.errors import NotFound
from kms.identity import validate_key_name
from kms.keypairs import is_key_pair, parse_key_type
from server.clock import Clock, now_seconds
from server.deployment.sealing import Sealer
from server.keys.material import Material
from server.keys.pairs import PublicKey
from server.keys.parsing import check_version, parse_disable_reason, parse_grant
from server.keys.release import FetchedKey, KeyReleases
from server.keys.schedule import creation_schedule, describe, schedule_change
from server.store import AuditEntry, Grant, KeyRecord, RevocationEvent, Store
from server.store.completion import after_commit
from server.store.records import SealFn

# KeyRecord is what KeyService answers with: re-exported so server/api needs no store import.
__all__ = ["FetchedKey", "KeyChange", "KeyRecord", "KeyService", "KeyStateChange", "PublicKey"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyChange:
    """A key after a create or grant, and what the administrator should be told about it."""

    record: KeyRecord
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyStateChange:
    """A key after a disable or enable; changed is False when it was in that state already."""

    record: KeyRecord
    changed: bool


class KeyService:
    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        clock: Clock,
        publish: Callable[[RevocationEvent], object],
        schedule_changed: Callable[[], None] = lambda: None,
        *,
        min_rotation_period: int = 3600,
    ) -> None:
        self._store = store
        # The shortest rotation period an administrator may set (setting min_rotation_period).
        self._min_period = min_rotation_period
        self._clock = clock
        # Rotation events go out on the watch feed, like revocations.
        self._publish = publish
        self._material = Material(sealer)
        self._types: dict[str, str] = {}  # a key's type never changes, and keys are never deleted
        # Wakes the key scheduler: a schedule changed here (or a key was enabled: an overdue
        # rotation is due at once).
        self._schedule_changed = schedule_changed
        # What agents ask of keys (server/keys/release.py), served here under the same names.
        self.releases = KeyReleases(store, self._material, self._now, self.key_type)
        self.fetch = self.releases.fetch
        self.public_key = self.releases.public_key
        self.granted = self.releases.granted

    def _now(self) -> int:
        return now_seconds(self._clock)

    def sealer_for(self, name: str, key_type: str) -> SealFn:
        """Seals fresh material of key_type (Material.sealer_for); a key pair is made here, now:
        make_sealer does it off the event loop."""
        return self._material.sealer_for(name, key_type)

    async def make_sealer(self, name: str, key_type: str | None = None) -> SealFn:
        """sealer_for, with the key's stored type unless given, generating in a worker thread.

        Raises NotFound when no key name exists (key_type None).
        """
        key_type = key_type or await self.key_type(name)
        if not is_key_pair(key_type):
            return self.sealer_for(name, key_type)
        return await asyncio.to_thread(self.sealer_for, name, key_type)

    async def key_type(self, name: str) -> str:
        """The key's type, read once (it never changes). Raises NotFound."""
        if name not in self._types:
            self._types[name] = await self._store.key_type(name)
        return self._types[name]

    async def _check_grantees(self, grants: list[Grant], allow_unknown: bool) -> tuple[str, ...]:
        """Refuses (NotFound) a grant to an agent nobody knows, unless allowed; then it is a warning.

        A typo in a grant would silently grant nothing today, and the key to whoever
        enrolls under that name later. An agent counts as known when it enrolled, or
        when an unused join token names it (the usual order: token, grant, enroll).
        Groups are not checked: a group may be granted before any member exists.
        """
        now = self._now()
        warnings = []
        for grant in grants:
            if grant.kind != "agent" or await self._store.is_known_agent(grant.grantee, now):
                continue
            if not allow_unknown:
                raise NotFound(
                    f"no agent named {grant.grantee!r} is enrolled or has an unused join token: check the "
                    "name, or pass --allow-unknown-grantee to grant it before the agent exists"
                )
            warnings.append(
                f"agent {grant.grantee!r} is not enrolled and no unused join token names it: whoever "
                "enrolls under that name later gets this key"
            )
        return tuple(warnings)

    async def create(
        self,
        name: str,
        grants: list[str],
        *,
        allow_unknown_grantee: bool = False,
        key_type: str = "",
        expires_at: int = 0,
        rotate_every: int = 0,
    ) -> KeyChange:
        """Creates key name (version 1) of key_type ("": aes-256) with its grants, and its schedule
        (0: no expiry, no rotation).

        Raises:
            InvalidArgument: a bad name, type, grant, expiry or period. AlreadyExists: the key exists.
            NotFound: a grant to an unknown agent, unless allow_unknown_grantee.
        """
        validate_key_name(name)
        key_type = parse_key_type(key_type)
        parsed = [parse_grant(g) for g in grants]
        now = self._now()
        schedule = creation_schedule(expires_at, rotate_every, now, self._min_period)
        warnings = await self._check_grantees(parsed, allow_unknown_grantee)
        seal = await self.make_sealer(name, key_type)  # checked first: generating a pair is slow
        type_note = f" type:{key_type}" if is_key_pair(key_type) else ""  # AES keys' records as before
        record = await self._store.create_key(
            name,
            now,
            seal,
            parsed,
            audit=AuditEntry(
                now, "admin", "key.create", f"key:{name}{type_note} {describe(schedule)}".rstrip()
            ),
            key_type=key_type,
            expires_at=schedule.expires_at,
            rotate_every=schedule.rotate_every,
        )
        logger.info(
            "key created",
            extra={
                "key": name,
                "type": key_type,
                "grants": ",".join(map(str, parsed)),
                "schedule": describe(schedule),
            },
        )
        if expires_at or rotate_every:
            self._schedule_changed()
        return KeyChange(record, warnings)

    async def set_schedule(self, name: str, expires_at: int | None, rotate_every: int | None) -> KeyRecord:
        """Sets (or with 0 clears) a key's expiry and rotation period; None leaves one as it is.

        Raises:
            InvalidArgument: a bad name, expiry or period, or nothing to change. NotFound: no such key.
            FailedPrecondition: the key has expired (expiry is final).
        """
        validate_key_name(name)
        now = self._now()
        change = schedule_change(expires_at, rotate_every, now, self._min_period)
        record = await self._store.set_key_schedule(
            name, change, now, audit=AuditEntry(now, "admin", "key.set", f"key:{name} {describe(change)}")
        )
        logger.info("key schedule set", extra={"key": name, "schedule": describe(change)})
        self._schedule_changed()
        return record

    async def get(self, name: str) -> KeyRecord:
        """One key, with its versions, grants and schedule. Raises InvalidArgument, NotFound."""
        return await self._store.get_key(validate_key_name(name))

    async def rotate(self, name: str) -> KeyRecord:
        validate_key_name(name)
        seal = await self.make_sealer(name)  # of the key's type; before the clock is read
        now = self._now()

        def committed(done: tuple[KeyRecord, RevocationEvent]) -> KeyRecord:
            record, event = done
            self._publish(event)  # even if the caller has gone: watchers must hear of it
            logger.info(
                "key rotated", extra={"key": name, "version": record.current_version, "seq": event.seq}
            )
            return record

        write = self._store.rotate_key(
            name,
            now,
            seal,
            audit=lambda done: AuditEntry(
                now, "admin", "key.rotate", f"key:{name}/v{done[0].current_version}"
            ),
        )
        return await after_commit(write, committed)

    async def disable(self, name: str, reason: str) -> KeyStateChange:
        """Stops every release of the key (reversible: enable). Idempotent, as AWS KMS DisableKey.

        Raises:
            InvalidArgument: a bad name or reason. NotFound: no such key.
        """
        validate_key_name(name)
        reason = parse_disable_reason(reason)
        now = self._now()
        write = self._store.disable_key(
            name, reason, now, audit=AuditEntry(now, "admin", "key.disable", f"key:{name} reason:{reason}")
        )
        return await after_commit(write, self._state_committed)

    async def enable(self, name: str) -> KeyStateChange:
        """Resumes releases of a disabled key. Idempotent. Raises InvalidArgument, NotFound."""
        validate_key_name(name)
        now = self._now()
        write = self._store.enable_key(name, now, audit=AuditEntry(now, "admin", "key.enable", f"key:{name}"))
        return await after_commit(write, self._state_committed)

    def _state_committed(self, done: tuple[KeyRecord, RevocationEvent | None]) -> KeyStateChange:
        record, event = done
        if event is not None:
            self._publish(event)  # even if the caller has gone: watchers must hear of it
            logger.info(
                f"key {event.kind}d",
                extra={"key": record.name, "reason": event.reason, "seq": event.seq},
            )
        if event is not None and event.kind == "enable":
            self._schedule_changed()
        return KeyStateChange(record, changed=event is not None)

    async def grant(self, name: str, grant: str, *, allow_unknown_grantee: bool = False) -> KeyChange:
        """Grants key name to an agent or group. Raises NotFound as create does, or for no such key."""
        parsed = parse_grant(grant)
        validate_key_name(name)
        warnings = await self._check_grantees([parsed], allow_unknown_grantee)
        now = self._now()
        record = await self._store.grant_key(
            name,
            parsed,
            now,
            audit=AuditEntry(now, "admin", "key.grant", f"key:{name} {parsed}"),
        )
        logger.info("key granted", extra={"key": name, "grant": str(parsed)})
        return KeyChange(record, warnings)

    async def ungrant(self, name: str, grant: str) -> KeyRecord:
        parsed = parse_grant(grant)
        record = await self._store.ungrant_key(
            validate_key_name(name),
            parsed,
            audit=AuditEntry(self._now(), "admin", "key.ungrant", f"key:{name} {parsed}"),
        )
        logger.info("key ungranted", extra={"key": name, "grant": str(parsed)})
        return record

    async def list(self) -> list[KeyRecord]:
        return await self._store.list_keys()

    async def destroy(self, name: str, version: int) -> KeyRecord:
        check_version(version, allow_current=False)
        now = self._now()
        try:
            record = await self._store.destroy_key_version(
                validate_key_name(name),
                version,
                now,
                audit=AuditEntry(now, "admin", "key.destroy", f"key:{name}/v{version}"),
            )
        finally:  # also when the erasure is left for later (FailedPrecondition after the commit)
            self.forget_wrapped(name, version)
        logger.info("key version destroyed", extra={"key": name, "version": version})
        return record

    def forget_wrapped(self, name: str, version: int) -> None:
        """Drops the kept wrappings of a version that is compromised or destroyed."""
        self._material.forget(name, version)
