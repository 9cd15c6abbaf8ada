"""The key distributor: named keys (AES-256, or key pairs) with versions, grants, and wrapped release.

Material (material.py; key pairs: pairs.py) is sealed at rest and leaves the
server only wrapped for the certificate that asked. A key's type never changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from kms.errors import InvalidArgument, KeyDisabled, KeyExpired, NotFound, PermissionDenied, WrongKeyType
from kms.identity import validate_key_name
from kms.keypairs import AES_256, is_key_pair, parse_key_type
from server.clock import Clock, now_seconds
from server.deployment.sealing import Sealer
from server.endpoints.authn import Caller
from server.keys.material import Material
from server.keys.pairs import PublicKey
from server.keys.parsing import check_version, parse_disable_reason, parse_grant
from server.keys.schedule import creation_schedule, describe, schedule_change
from server.store import AuditEntry, Grant, KeyRecord, KeyVersionRecord, RevocationEvent, Store
from server.store.completion import after_commit
from server.store.records import SealFn

# KeyRecord is what KeyService answers with: re-exported so server/api needs no store import.
__all__ = ["FetchedKey", "KeyChange", "KeyRecord", "KeyService", "KeyStateChange", "PublicKey"]

logger = logging.getLogger(__name__)


# Refused releases and public key reads that are audited, and their outcome in the trail: who
# asks for a key not granted, disabled, expired or of the other kind is what an administrator
# wants to know.
_AUDITED = {
    KeyDisabled: "disabled",
    KeyExpired: "expired",
    PermissionDenied: "denied",
    WrongKeyType: "wrong-type",
}


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
    wrapped: bytes  # kms.wrap format 1 (AES keys) or 2 (a key pair's private key)
    key_type: str = AES_256


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

    async def granted(self, caller: Caller) -> tuple[KeyRecord, ...]:
        """The keys granted to caller, by name or through one of its groups (no release recorded)."""
        return tuple(await self._store.granted_keys(caller.name, caller.groups))

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

    async def fetch(
        self,
        caller: Caller,
        name: str,
        version: int,
        *,
        decrypt: bool = False,
        key_pair: bool = False,
        legacy: bool = False,
    ) -> FetchedKey:
        """Releases one version (0: the current one) wrapped for the calling certificate.

        key_pair: the caller asks for a key pair's private key (wrap format 2); else an AES key.
        For encryption unless decrypt: the key must not have expired and the version must be
        active (a rotated-out one decrypts only). For decryption the version must be named, and
        is released whether or not the key has expired (KMIP: a deactivated key still decrypts).
        legacy: an agent from before purposes said nothing: encryption's expiry check, but any
        version (it decrypts under named ones).

        Raises:
            InvalidArgument: bad name or version (or decrypt without a version).
            PermissionDenied: not granted to the caller or its groups (or no such key).
            NotFound: no such version. FailedPrecondition: destroyed.
            KeyDisabled: the key is disabled (after the grant is checked).
            WrongKeyType: the key is not of the kind key_pair asks for (nothing is released).
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
                key_pair=key_pair,
                active_only=not (decrypt or legacy),
            )
        except (PermissionDenied, KeyDisabled, KeyExpired, WrongKeyType) as refused:
            await self._audit_refusal(actor, "key.release", name, refused)
            raise
        wrapped = self._material.wrapped_for(caller, record)
        # DEBUG, fields built only when logged: the audit trail has every release (INFO would cost as much).
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "key released",
                extra={"key": name, "version": record.version, "agent": caller.name, "serial": caller.serial},
            )
        return FetchedKey(record, wrapped, await self.key_type(name) if key_pair else AES_256)

    async def public_key(self, caller: Caller, name: str, version: int) -> PublicKey:
        """A key pair's public key (version 0: the current one) for a caller granted the key.

        Public: no release is recorded (a refusal is audited). A compromised version is answered,
        with its state.

        Raises:
            InvalidArgument: bad name or version. PermissionDenied: not granted (or no such key).
            KeyDisabled, WrongKeyType (an AES key), NotFound (no such version),
            FailedPrecondition (destroyed).
        """
        validate_key_name(name)
        check_version(version, allow_current=True)
        try:
            key_type, record = await self._store.public_key_version(
                name, version or None, caller.name, caller.groups
            )
        except (PermissionDenied, KeyDisabled, WrongKeyType) as refused:  # an answered read is public
            await self._audit_refusal(f"agent:{caller.name}/{caller.serial}", "key.public", name, refused)
            raise
        return PublicKey(key_type, record)

    async def _audit_refusal(self, actor: str, action: str, name: str, refused: Exception) -> None:
        outcome = next(word for cls, word in _AUDITED.items() if isinstance(refused, cls))
        await self._store.append_audit(AuditEntry(self._now(), actor, action, f"key:{name}", outcome))
