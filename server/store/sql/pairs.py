"""Key types: reading a key's type, and a key pair's public keys (its transactions; SqlStore's
methods for them are in key_store.py)."""

from __future__ import annotations

from typing import TypeVar

from kms.errors import FailedPrecondition
from kms.keypairs import require_key_pair
from server.store import rules
from server.store.dialect import Tx
from server.store.records import KeyVersionRecord
from server.store.rows import VERSION_COLUMNS
from server.store.sql.keys import granted_to

__all__ = ["key_type", "public_key_version"]

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
