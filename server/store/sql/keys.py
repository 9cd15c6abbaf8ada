"""Keys: versions, grants and the release log.

Every change to a key first locks its row in ``keys``, so two replicas
rotating or revoking the same key at once take turns: versions never fork and
never repeat. A release's authorization is a derived read: cached where the
backend can (SQLite), and cleared by every write that changes keys.
"""

from __future__ import annotations

from server.store import rules
from server.store.dialect import Tx
from server.store.records import Grant, KeyRecord, KeyVersionRecord, RevocationEvent, SealFn
from server.store.rows import VERSION_COLUMNS
from server.store.sql.events import add_current_version, append_event

__all__ = [
    "create_key",
    "destroy_key_version",
    "disable_key",
    "enable_key",
    "grant_key",
    "granted_keys",
    "granted_to",
    "list_keys",
    "release_key_version",
    "rotate_key",
    "ungrant_key",
]

_KEY = (
    "SELECT name, current_version, created_at, disabled_at, disabled_reason, key_type, expires_at,"
    " rotate_every, rotation_due_at, expiry_notices FROM keys WHERE name=?"
)
_VERSION = f"SELECT {VERSION_COLUMNS}, sealed_material FROM key_versions WHERE key_name=? AND version=?"  # noqa: S608
_ADD_GRANT = "INSERT INTO key_grants VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
# Whether the caller's certificate is revoked (and why).
_REVOKED = "SELECT COALESCE(revocation_reason, 'unspecified') FROM certificates WHERE serial=? AND revoked_at IS NOT NULL"


def granted_to(groups: tuple[str, ...], key: str = "?") -> str:
    """Whether key (a placeholder, or a column) is granted to agent ? or one of groups (their
    placeholders follow)."""
    in_groups = f" OR (kind='group' AND grantee IN ({','.join('?' * len(groups))}))" if groups else ""
    return (
        "EXISTS (SELECT 1 FROM key_grants"  # noqa: S608 - placeholders only
        f" WHERE key_name={key} AND ((kind='agent' AND grantee=?){in_groups}))"
    )


async def key(tx: Tx, name: str, *, lock: bool = False) -> KeyRecord:
    """The key with its versions and grants; lock: its row, until COMMIT (NO KEY UPDATE: the
    weakest lock that still orders writers). Raises NotFound."""
    row = await tx.fetchrow(
        tx.locked(_KEY, "FOR NO KEY UPDATE") if lock else _KEY,
        name,
    )
    if row is None:
        raise rules.no_key(name)
    versions = await tx.fetch(
        f"SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_name=? ORDER BY version",  # noqa: S608
        name,
    )
    grants = await tx.fetch(
        "SELECT kind, grantee FROM key_grants WHERE key_name=? ORDER BY kind, grantee", name
    )
    return KeyRecord(
        row[0],
        row[1],
        row[2],
        tuple(KeyVersionRecord(*v) for v in versions),
        tuple(Grant(*g) for g in grants),
        *row[3:],
    )


async def create_key(
    tx: Tx,
    name: str,
    now: int,
    seal: SealFn,
    grants: list[Grant],
    key_type: str = "aes-256",
    expires_at: int | None = None,
    rotate_every: int | None = None,
) -> KeyRecord:
    """expires_at: None never; rotate_every: seconds (None: by hand only), the first rotation due then."""
    if not await tx.execute(
        "INSERT INTO keys(name, current_version, created_at, key_type, expires_at, rotate_every, rotation_due_at)"
        " VALUES (?, 1, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        name,
        now,
        key_type,
        expires_at,
        rotate_every,
        now + rotate_every if rotate_every else None,
    ):
        raise rules.key_exists(name)
    await add_current_version(tx, name, 1, seal, now)
    await tx.executemany(_ADD_GRANT, [(name, g.kind, g.grantee, now) for g in grants])
    return await key(tx, name)


async def rotate_key(tx: Tx, name: str, now: int, seal: SealFn) -> tuple[KeyRecord, RevocationEvent]:
    record = await key(tx, name, lock=True)
    if record.expires_at is not None and record.expires_at <= now:
        raise rules.expiry_final(name, record.expires_at)  # an expired key makes no new version
    current = record.current_version
    new = current + 1
    # KMIP: a rotated-out version is Deactivated (decrypt only), unless already worse.
    await tx.execute(
        "UPDATE key_versions SET state='deactivated', state_changed_at=?, deactivated_at=?"
        " WHERE key_name=? AND version=? AND state='active'",
        now,
        now,
        name,
        current,
    )
    await add_current_version(tx, name, new, seal, now)
    # Tells watching agents to refresh key files that follow the current version.
    event = await append_event(tx, "rotate", "superseded", now, key=(name, new))
    return await key(tx, name), event


async def disable_key(tx: Tx, name: str, reason: str, now: int) -> tuple[KeyRecord, RevocationEvent | None]:
    """Stops every release of the key; None for the event when it was disabled already
    (nothing changes: the first reason stays)."""
    await tx.lock_key(name)
    record = await key(tx, name, lock=True)
    if record.disabled_at is not None:
        return record, None
    await tx.execute("UPDATE keys SET disabled_at=?, disabled_reason=? WHERE name=?", now, reason, name)
    event = await append_event(tx, "disable", reason, now, key=(name, record.current_version))
    return await key(tx, name), event


async def enable_key(tx: Tx, name: str, now: int) -> tuple[KeyRecord, RevocationEvent | None]:
    """Resumes releases of a disabled key; None for the event when it was not disabled."""
    await tx.lock_key(name)
    record = await key(tx, name, lock=True)
    if record.disabled_at is None:
        return record, None
    await tx.execute("UPDATE keys SET disabled_at=NULL, disabled_reason=NULL WHERE name=?", name)
    event = await append_event(tx, "enable", "", now, key=(name, record.current_version))
    return await key(tx, name), event


async def grant_key(tx: Tx, name: str, grant: Grant, now: int) -> KeyRecord:
    await key(tx, name, lock=True)
    await tx.execute(_ADD_GRANT, name, grant.kind, grant.grantee, now)
    return await key(tx, name)


async def ungrant_key(tx: Tx, name: str, grant: Grant) -> KeyRecord:
    await key(tx, name, lock=True)
    if not await tx.execute(
        "DELETE FROM key_grants WHERE key_name=? AND kind=? AND grantee=?", name, grant.kind, grant.grantee
    ):
        raise rules.no_grant(name, grant)
    return await key(tx, name)


async def list_keys(tx: Tx) -> list[KeyRecord]:
    return [await key(tx, r[0]) for r in await tx.fetch("SELECT name FROM keys ORDER BY name")]


async def granted_keys(tx: Tx, agent: str, groups: tuple[str, ...]) -> list[KeyRecord]:
    """The keys granted to agent or one of groups, and no other key."""
    names = await tx.fetch(
        f"SELECT name FROM keys k WHERE {granted_to(groups, 'k.name')} ORDER BY name",  # noqa: S608
        agent,
        *groups,
    )
    return [await key(tx, r[0]) for r in names]


async def destroy_key_version(tx: Tx, name: str, version: int, now: int) -> KeyRecord:
    record = await key(tx, name, lock=True)
    found = [v for v in record.versions if v.version == version]
    if not found:
        raise rules.no_version(name, version)
    if version == record.current_version:
        raise rules.still_current(name, version)
    new_state = rules.destroyed_state(found[0].state)
    if new_state is not None:
        await tx.execute(
            "UPDATE key_versions SET state=?, sealed_material=NULL, state_changed_at=? WHERE key_name=? AND version=?",
            new_state,
            now,
            name,
            version,
        )
    return await key(tx, name)


async def release_key_version(
    tx: Tx,
    name: str,
    version: int | None,
    agent: str,
    groups: tuple[str, ...],
    serial: str,
    now: int,
    encrypt: bool = True,
    key_pair: bool = False,
    active_only: bool = False,
) -> KeyVersionRecord:
    """Checks the caller's certificate, then the grant, then that the key is enabled, of the kind
    asked for (key_pair: a key pair's private key; else an AES key) and, for encryption
    (encrypt; and for a key pair, whatever the purpose) not expired at now, and with
    active_only that the version is active (KMIP: a deactivated one decrypts only); logs the release.

    The caller's certificate lock and the key's (shared): a revocation of the certificate, or
    a disable of the key, on any replica, has either committed (and is read here) or waits
    until this release has; neither is cached (a disable also clears SQLite's cache). Expiry
    is a matter of time: the cached answer keeps expires_at, compared with now on every call.
    """
    await tx.lock_release(serial, name)
    cache_key = ("release", name, version, agent, groups, key_pair)  # a key's type never changes
    cached: tuple[KeyVersionRecord, int | None] | None = tx.cached(cache_key)
    if cached is not None:
        (record, expires_at), revoked = cached, await _revocation(tx, serial)
    else:
        revoked, granted, current, disabled, key_type, expires_at = await tx.fetchrow(
            f"SELECT ({_REVOKED}), {granted_to(groups)},"  # noqa: S608 - placeholders only
            " k.current_version, CASE WHEN k.disabled_at IS NULL THEN NULL ELSE COALESCE(k.disabled_reason, '') END,"
            " k.key_type, k.expires_at FROM (SELECT 1) AS one LEFT JOIN keys k ON k.name=?",
            serial,
            name,
            agent,
            *groups,
            name,
        )
    if revoked is not None:
        raise rules.caller_revoked(serial, revoked)
    tx.remember(("unrevoked", serial), True)
    if cached is None:
        if not granted:
            raise rules.not_granted(name)
        if disabled is not None:
            raise rules.key_disabled(name, disabled)
        rules.check_key_kind(name, key_type, key_pair)
    # A key pair's private key signs: never released once its key has expired, whatever the purpose.
    if (encrypt or key_pair) and expires_at is not None and expires_at <= now:
        raise rules.key_expired(name, expires_at, key_pair=key_pair)
    if cached is None:
        record = await _releasable(tx, name, version or current)
        tx.remember(cache_key, (record, expires_at))
    if active_only and record.state != "active":  # KMIP Deactivated: decrypt only
        raise rules.decrypt_only(name, record.version)
    await tx.insert_later(
        "INSERT INTO key_releases(key_name, version, agent_name, cert_serial, released_at) VALUES (?, ?, ?, ?, ?)",
        [(name, record.version, agent, serial, now)],
    )
    return record


async def _revocation(tx: Tx, serial: str) -> str | None:
    """Why serial was revoked (None: it was not), as _REVOKED reads it now.

    SQLite's cache remembers a serial found unrevoked until any write that is more than a
    release or an audit record (a revocation is one; server/store/sqlite/commit.py), or
    until another connection writes: the store's word, without a query per release.
    """
    if tx.cached(("unrevoked", serial)):
        return None
    revoked: str | None = await tx.fetchval(_REVOKED, serial)
    return revoked


async def _releasable(tx: Tx, name: str, wanted: int) -> KeyVersionRecord:
    """The version a granted agent asks for, if it may be released; raises why not."""
    # FOR SHARE: a compromise or destroy committing meanwhile (on any replica)
    # waits for this release, or this release sees it; never both announced and released.
    row = await tx.fetchrow(
        tx.locked(_VERSION, "FOR SHARE"),
        name,
        wanted,
    )
    return rules.check_releasable(name, wanted, None if row is None else KeyVersionRecord(*row))
