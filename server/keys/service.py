"""The key distributor: named AES-256 keys with versions, grants, and wrapped release.

Material is drawn from the OS CSPRNG, sealed under the master key in a slot
named for its key and version (so a ciphertext moved to another row does not
open), and leaves the server only wrapped for the certificate that asked.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kms.errors import InvalidArgument, KeyDisabled, KeyExpired, NotFound, PermissionDenied
from kms.identity import validate_key_name
from kms.wrap import KEY_BYTES, wrap
from server.clock import Clock, now_seconds
from server.deployment.sealing import Sealer
from server.endpoints.authn import Caller
from server.keys.parsing import check_version, parse_disable_reason, parse_grant
from server.keys.schedule import creation_schedule, describe, schedule_change
from server.store import AuditEntry, Grant, KeyRecord, KeyVersionRecord, RevocationEvent, Store
from server.store.completion import after_commit
from server.store.records import SealFn

# KeyRecord is what KeyService answers with: re-exported so server/api needs no store import.
__all__ = ["FetchedKey", "KeyChange", "KeyRecord", "KeyService", "KeyStateChange"]

logger = logging.getLogger(__name__)

# Wrapped keys kept for repeated releases (a few hundred bytes each).
_WRAPPED_CACHE = 10_000


def _slot(name: str, version: int) -> str:
    return f"aes-key/{name}/{version}"


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


@dataclass(frozen=True)
class FetchedKey:
    version: KeyVersionRecord
    wrapped: bytes


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
        self._sealer = sealer
        self._clock = clock
        # Rotation events go out on the watch feed, like revocations.
        self._publish = publish
        self._wrapped: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        # Wakes the key scheduler: a schedule changed here (or a key was enabled: an overdue
        # rotation is due at once).
        self._schedule_changed = schedule_changed

    def _now(self) -> int:
        return now_seconds(self._clock)

    def sealer_for(self, name: str) -> SealFn:
        """Seals fresh random material for a version number the store allocates."""

        def seal(version: int) -> bytes:
            return self._sealer.seal(_slot(name, version), os.urandom(KEY_BYTES))

        return seal

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
        expires_at: int = 0,
        rotate_every: int = 0,
    ) -> KeyChange:
        """Creates key name (version 1) with its grants, and its schedule (0: no expiry, no rotation).

        Raises:
            InvalidArgument: a bad name, grant, expiry or period. AlreadyExists: the key exists.
            NotFound: a grant to an unknown agent, unless allow_unknown_grantee.
        """
        validate_key_name(name)
        parsed = [parse_grant(g) for g in grants]
        now = self._now()
        schedule = creation_schedule(expires_at, rotate_every, now, self._min_period)
        warnings = await self._check_grantees(parsed, allow_unknown_grantee)
        record = await self._store.create_key(
            name,
            now,
            self.sealer_for(name),
            parsed,
            audit=AuditEntry(now, "admin", "key.create", f"key:{name} {describe(schedule)}".rstrip()),
            expires_at=schedule.expires_at,
            rotate_every=schedule.rotate_every,
        )
        logger.info(
            "key created",
            extra={"key": name, "grants": ",".join(map(str, parsed)), "schedule": describe(schedule)},
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
        now = self._now()
        validate_key_name(name)

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
            self.sealer_for(name),
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
        for slot in [s for s in self._wrapped if s[1:] == (name, version)]:
            del self._wrapped[slot]

    def _wrapped_for(self, caller: Caller, record: KeyVersionRecord) -> bytes:
        """The version's material wrapped for the caller's certificate.

        A certificate asking again for the same version gets the same wrapping:
        it is public-key ciphertext only that certificate's key opens, so
        reusing it reveals nothing, and it saves an unseal and an RSA operation
        per release. The store has already decided this release is allowed.
        """
        slot = (caller.serial, record.key_name, record.version)
        wrapped = self._wrapped.get(slot)
        if wrapped is None:
            assert record.sealed_material is not None
            material = self._sealer.open(_slot(record.key_name, record.version), record.sealed_material)
            wrapped = wrap(caller.public_key, material, record.key_name, record.version, caller.serial)
            self._wrapped[slot] = wrapped
            if len(self._wrapped) > _WRAPPED_CACHE:
                self._wrapped.popitem(last=False)
        else:
            self._wrapped.move_to_end(slot)
        return wrapped

    async def fetch(self, caller: Caller, name: str, version: int, *, decrypt: bool = False) -> FetchedKey:
        """Releases one version (0: the current one) wrapped for the calling certificate.

        For encryption unless decrypt: then the version must be named, and is released
        whether or not the key has expired (KMIP: a deactivated key still decrypts).

        Raises:
            InvalidArgument: bad name or version (or decrypt without a version).
            PermissionDenied: not granted to the caller or its groups (or no such key).
            NotFound: no such version. FailedPrecondition: destroyed.
            KeyDisabled: the key is disabled (after the grant is checked).
            KeyExpired: for encryption, the key has expired (after the grant is checked).
        """
        validate_key_name(name)
        check_version(version, allow_current=True)
        if decrypt and not version:
            raise InvalidArgument(
                "fetching a key to decrypt names the version the data was encrypted under (version 0 is not one)"
            )
        now, actor = self._now(), f"agent:{caller.name}/{caller.serial}"
        try:
            record = await self._store.release_key_version(
                name,
                version or None,
                caller.name,
                caller.groups,
                caller.serial,
                now,
                audit=lambda v: AuditEntry(now, actor, "key.release", f"key:{name}/v{v.version}"),
                encrypt=not decrypt,
            )
        except PermissionDenied:
            await self._store.append_audit(AuditEntry(now, actor, "key.release", f"key:{name}", "denied"))
            raise
        except KeyDisabled:  # who still asks for a disabled key is what its administrator wants to know
            await self._store.append_audit(AuditEntry(now, actor, "key.release", f"key:{name}", "disabled"))
            raise
        except KeyExpired:  # and who still tries to encrypt under an expired one
            await self._store.append_audit(AuditEntry(now, actor, "key.release", f"key:{name}", "expired"))
            raise
        wrapped = self._wrapped_for(caller, record)
        # DEBUG: every release is in the audit trail already; at INFO this line
        # would cost as much as the release itself under load.
        logger.debug(
            "key released",
            extra={"key": name, "version": record.version, "agent": caller.name, "serial": caller.serial},
        )
        return FetchedKey(record, wrapped)
