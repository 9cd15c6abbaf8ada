"""What agents ask of keys: a version released wrapped for the calling certificate, a key pair's
public key, the keys granted to them. Every release is audited, and so is every refusal of a
release or of a public key."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kms.errors import InvalidArgument, KeyDisabled, KeyExpired, PermissionDenied, WrongKeyType
from kms.identity import validate_key_name
from kms.keypairs import AES_256
from server.endpoints.authn import Caller
from server.keys.material import Material
from server.keys.pairs import PublicKey
from server.keys.parsing import check_version
from server.store import AuditEntry, KeyRecord, KeyVersionRecord, Store

__all__ = ["FetchedKey", "KeyReleases"]

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
class FetchedKey:
    version: KeyVersionRecord
    wrapped: bytes  # kms.wrap format 1 (AES keys) or 2 (a key pair's private key)
    key_type: str = AES_256


class KeyReleases:
    """Args:
    store, material: the key service's.
    now: Unix seconds.
    key_type: a key's type (read once: KeyService.key_type).
    """

    def __init__(
        self,
        store: Store,
        material: Material,
        now: Callable[[], int],
        key_type: Callable[[str], Awaitable[str]],
    ) -> None:
        self._store = store
        self._material = material
        self._now = now
        self._key_type = key_type

    async def granted(self, caller: Caller) -> tuple[KeyRecord, ...]:
        """The keys granted to caller, by name or through one of its groups (no release recorded)."""
        return tuple(await self._store.granted_keys(caller.name, caller.groups))

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
        return FetchedKey(record, wrapped, await self._key_type(name) if key_pair else AES_256)

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
