"""Key types: creating a key of a type, reading its type, and a key pair's public keys.

SqlStore's methods for them live here, as its base class KeyTypeMethods: one
concept, and store.py stays small.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from kms.errors import FailedPrecondition
from kms.keypairs import AES_256, require_key_pair
from server.store import rules
from server.store.dialect import Backend, Body, Tx
from server.store.records import Audit, Grant, KeyRecord, KeyVersionRecord, SealFn
from server.store.rows import VERSION_COLUMNS
from server.store.sql.keys import create_key, granted_to

__all__ = ["KeyTypeMethods", "key_type", "public_key_version"]

T = TypeVar("T")
_DESTROYED = ("destroyed", "destroyed_compromised")


async def key_type(tx: Tx, name: str) -> str:
    """The key's type (it never changes). Raises NotFound."""
    found = await tx.fetchval("SELECT key_type FROM keys WHERE name=?", name)
    if found is None:
        raise rules.no_key(name)
    return str(found)


async def public_key_version(
    tx: Tx, name: str, version: int | None, agent: str, groups: tuple[str, ...]
) -> tuple[str, KeyVersionRecord]:
    """The key's type and the version (None: the current one), with its public key.

    Checked in the order of a release: the grant (an agent not granted learns
    nothing), the key enabled, a key pair, the version not destroyed.
    """
    granted, current, disabled, found_type = await tx.fetchrow(
        f"SELECT {granted_to(groups)}, k.current_version,"  # noqa: S608 - placeholders only
        " CASE WHEN k.disabled_at IS NULL THEN NULL ELSE COALESCE(k.disabled_reason, '') END, k.key_type"
        " FROM (SELECT 1) AS one LEFT JOIN keys k ON k.name=?",
        name,
        agent,
        *groups,
        name,
    )
    if not granted:
        raise rules.not_granted(name)
    if disabled is not None:
        raise rules.key_disabled(name, disabled)
    require_key_pair(name, found_type, "give a public key")
    wanted = version or current
    row = await tx.fetchrow(
        f"SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_name=? AND version=?",  # noqa: S608
        name,
        wanted,
    )
    if row is None:
        raise rules.no_version(name, wanted)
    record = KeyVersionRecord(*row)
    if record.state in _DESTROYED or record.public_key is None:
        raise FailedPrecondition(
            f"version {wanted} of key {name!r} was destroyed: signatures by it can no longer be verified"
        )
    return found_type, record


class KeyTypeMethods:
    """SqlStore's methods that know a key's type."""

    _backend: Backend

    def _change(
        self, body: Body[T], audit_with: Audit = None, *, savepoint: bool = True, invalidates: bool = False
    ) -> Awaitable[T]:
        raise NotImplementedError  # SqlStore's

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
            lambda tx: create_key(tx, name, now, seal, grants, key_type, expires_at, rotate_every),
            audit,
            invalidates=True,
        )

    async def key_type(self, name: str) -> str:
        """The key's type: "aes-256", "rsa-2048", "rsa-3072", "rsa-4096" or "ec-p256". Raises NotFound."""
        return await self._backend.read(lambda tx: key_type(tx, name))

    async def public_key_version(
        self, name: str, version: int | None, agent: str, groups: tuple[str, ...]
    ) -> tuple[str, KeyVersionRecord]:
        """The key's type and one version (None: current) with its public key, for a granted agent.

        Raises:
            PermissionDenied: not granted (also when the key does not exist).
            KeyDisabled: the key is disabled. WrongKeyType: an AES key.
            NotFound: no such version. FailedPrecondition: destroyed.
        """
        return await self._backend.read(lambda tx: public_key_version(tx, name, version, agent, groups))
