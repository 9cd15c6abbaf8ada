"""SqlStore's methods about keys: creating (of any type), reading, scheduling, rotating,
granting, disabling, destroying and releasing them. The transactions are in keys.py (and
pairs.py for types and public keys, schedules.py for expiry and rotation periods)."""

from __future__ import annotations

from kms.keypairs import AES_256
from server.store import rules
from server.store.records import (
    Audit,
    Grant,
    KeyRecord,
    KeyVersionRecord,
    RevocationEvent,
    ScheduleChange,
    SealFn,
)
from server.store.sql import keys, pairs, schedules
from server.store.sql.methods import Methods, if_changed

__all__ = ["KeyMethods"]


class KeyMethods(Methods):
    async def create_key(
        self,
        name: str,
        now: int,
        seal: SealFn,
        grants: list[Grant],
        *,
        audit: Audit = None,
        key_type: str = AES_256,
        expires_at: int | None = None,
        rotate_every: int | None = None,
    ) -> KeyRecord:
        """Creates key name of key_type with version 1, and its schedule (expires_at: Unix
        seconds; rotate_every: seconds; None: none). Raises AlreadyExists.

        A key pair's material is made before: seal only seals it (and gives its public key).
        """
        return await self._change(
            lambda tx: keys.create_key(tx, name, now, seal, grants, key_type, expires_at, rotate_every),
            audit,
            invalidates=True,
        )

    async def key_type(self, name: str) -> str:
        """The key's type: "aes-256", "rsa-2048", "rsa-3072", "rsa-4096" or "ec-p256". Raises NotFound."""
        return await self._backend.read(lambda tx: pairs.key_type(tx, name))

    async def public_key_version(
        self, name: str, version: int | None, agent: str, groups: tuple[str, ...]
    ) -> tuple[str, KeyVersionRecord]:
        """The key's type and one version (None: current) with its public key, for a granted agent.

        Raises:
            PermissionDenied: not granted (also when the key does not exist).
            KeyDisabled: the key is disabled. WrongKeyType: an AES key.
            NotFound: no such version. FailedPrecondition: destroyed.
        """
        return await self._backend.read(lambda tx: pairs.public_key_version(tx, name, version, agent, groups))

    async def get_key(self, name: str) -> KeyRecord:
        """The key with its versions and grants. Raises NotFound."""
        return await self._read(lambda tx: keys.key(tx, name))

    async def set_key_schedule(
        self, name: str, change: ScheduleChange, now: int, *, audit: Audit = None
    ) -> KeyRecord:
        """Sets or clears a key's expiry and rotation period. Raises NotFound, FailedPrecondition."""
        return await self._change(
            lambda tx: schedules.set_key_schedule(tx, name, change, now), audit, invalidates=True
        )

    async def count_keys_expiring(self, now: int, within: tuple[int, ...]) -> tuple[int, ...]:
        """For each window in seconds, the keys not expired at now that expire within it."""
        return await self._read(lambda tx: schedules.count_keys_expiring(tx, now, within))

    async def rotate_key(
        self, name: str, now: int, seal: SealFn, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent]:
        """Adds a new current version; the old current one becomes deactivated. Raises NotFound.

        Appends a 'rotate' event naming the new version, in the same transaction.
        """
        return await self._change(lambda tx: keys.rotate_key(tx, name, now, seal), audit, invalidates=True)

    async def disable_key(
        self, name: str, reason: str, now: int, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent | None]:
        """Stops every release of the key until enable_key, with a 'disable' event. Raises NotFound.

        Once this has committed, no release of the key commits (on any replica). Disabling
        a disabled key changes nothing: the event is None and nothing is audited.
        """
        return await self._change(
            lambda tx: keys.disable_key(tx, name, reason, now), if_changed(audit), invalidates=True
        )

    async def enable_key(
        self, name: str, now: int, *, audit: Audit = None
    ) -> tuple[KeyRecord, RevocationEvent | None]:
        """Resumes releases of a disabled key, with an 'enable' event. Raises NotFound.

        Enabling an enabled key changes nothing: the event is None and nothing is audited.
        """
        return await self._change(
            lambda tx: keys.enable_key(tx, name, now), if_changed(audit), invalidates=True
        )

    async def grant_key(self, name: str, grant: Grant, now: int, *, audit: Audit = None) -> KeyRecord:
        return await self._change(lambda tx: keys.grant_key(tx, name, grant, now), audit, invalidates=True)

    async def ungrant_key(self, name: str, grant: Grant, *, audit: Audit = None) -> KeyRecord:
        return await self._change(lambda tx: keys.ungrant_key(tx, name, grant), audit, invalidates=True)

    async def list_keys(self) -> list[KeyRecord]:
        return await self._read(keys.list_keys)

    async def granted_keys(self, agent: str, groups: tuple[str, ...]) -> list[KeyRecord]:
        """The keys granted to agent, by name or through one of groups (a read: nothing released)."""
        return await self._read(lambda tx: keys.granted_keys(tx, agent, groups))

    async def destroy_key_version(
        self, name: str, version: int, now: int, *, audit: Audit = None
    ) -> KeyRecord:
        """Erases the material of a non-current version for good. Raises NotFound, FailedPrecondition."""
        record = await self._change(
            lambda tx: keys.destroy_key_version(tx, name, version, now), audit, invalidates=True
        )
        if not await self._backend.erase():
            raise rules.not_erased(name, version)
        return record

    async def release_key_version(
        self,
        name: str,
        version: int | None,
        agent: str,
        groups: tuple[str, ...],
        serial: str,
        now: int,
        *,
        audit: Audit = None,
        encrypt: bool = True,
        key_pair: bool = False,
        active_only: bool = False,
    ) -> KeyVersionRecord:
        """Checks the grant, then returns the version (with sealed material) and logs the release.

        A revocation of the certificate serial (or its agent) and a release never both commit
        in the wrong order: once the revocation has committed, the release is refused. Reads,
        then inserts later only: no savepoint needed.

        Raises:
            Revoked: the certificate serial was revoked (after the caller was authenticated).
            PermissionDenied: no grant for agent or its groups (also when the key does not exist).
            NotFound: no such version. FailedPrecondition: the version was destroyed.
            KeyExpired: for encryption (encrypt) or a key pair, the key expired by now.
            FailedPrecondition: active_only, and the version is deactivated (decrypt only).
            WrongKeyType: not of the kind asked for (key_pair: a key pair; else AES).
        """
        return await self._change(
            lambda tx: keys.release_key_version(
                tx, name, version, agent, groups, serial, now, encrypt, key_pair, active_only
            ),
            audit,
            savepoint=False,
        )
