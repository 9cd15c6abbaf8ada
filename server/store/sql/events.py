"""Revocations and the event log: each state change and its event, in one transaction.

Every path that revokes a certificate locks its row, then its advisory lock
(tx.lock_certificates), in that order, so revocations, replacing enrollments
and key releases on several replicas take turns without deadlocking.
"""

from __future__ import annotations

from typing import Any

from kms.revocation import HOLD
from server.store import rules
from server.store.dialect import Tx
from server.store.records import CertificateRecord, RevocationEvent, SealedVersion, SealFn
from server.store.rows import (
    CERT_COLUMNS,
    DESCENDANTS,
    EVENT_COLUMNS,
    cert_record,
    event_record,
    grantees_json,
)

__all__ = [
    "add_current_version",
    "append_event",
    "events_after",
    "get_certificate",
    "last_event",
    "last_seq",
    "revoke_agent",
    "revoke_certificate",
    "revoke_key_version",
    "revoke_lineage",
    "revoked_certificates",
]

_REVOKE = "UPDATE certificates SET revoked_at=?, revocation_reason=? WHERE serial=?"


async def append_event(
    tx: Tx,
    kind: str,
    reason: str,
    now: int,
    *,
    serial: str | None = None,
    agent: str | None = None,
    key: tuple[str, int] | None = None,
) -> RevocationEvent:
    """Appends one event to the log in tx; its seq is the next one.

    A key event records the key's grantees as of this transaction (see RevocationEvent.grantees).
    """
    key_name, key_version = key if key else (None, None)
    grantees = None
    if key_name is not None:
        rows = await tx.fetch("SELECT kind, grantee FROM key_grants WHERE key_name=?", key_name)
        grantees = tuple(sorted(f"{r[0]}:{r[1]}" for r in rows))
    seq = await tx.insert_event(
        (kind, serial, agent, key_name, key_version, reason, now, grantees_json(grantees))
    )
    return RevocationEvent(seq, kind, serial, agent, key_name, key_version, reason, now, grantees)


async def add_current_version(
    tx: Tx, name: str, new: int, seal: SealFn, now: int, *, deactivated: bool = False
) -> None:
    """Makes version new of key name current: active (a creation or rotation), or deactivated
    (replacing a compromised one of a key that has expired: it may only decrypt)."""
    sealed = seal(new)
    if isinstance(sealed, bytes):
        sealed = SealedVersion(sealed)
    await tx.execute(
        "INSERT INTO key_versions(key_name, version, state, sealed_material, public_key, created_at,"
        " state_changed_at, deactivated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        name,
        new,
        "deactivated" if deactivated else "active",
        sealed.sealed_material,
        sealed.public_key,
        now,
        now,
        now if deactivated else None,
    )
    await tx.execute("UPDATE keys SET current_version=? WHERE name=?", new, name)


async def revoked_certificates(tx: Tx) -> list[CertificateRecord]:
    rows = await tx.fetch(
        f"SELECT {CERT_COLUMNS} FROM certificates WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial"  # noqa: S608
    )
    return [cert_record(r) for r in rows]


async def _locked_certificate(tx: Tx, serial: str) -> Any:
    """The certificate's (agent_name, revoked_at, revocation_reason), its row locked until COMMIT."""
    row = await tx.fetchrow(
        tx.locked(
            "SELECT agent_name, revoked_at, revocation_reason FROM certificates WHERE serial=?", "FOR UPDATE"
        ),
        serial,
    )
    if row is None:
        raise rules.no_certificate(serial)
    return row


async def revoke_certificate(tx: Tx, serial: str, reason: str, now: int) -> RevocationEvent | None:
    row = await _locked_certificate(tx, serial)
    if not rules.revocable(row[1], row[2], reason):
        return None
    await tx.lock_certificates([serial])
    await tx.execute(_REVOKE, now, reason, serial)
    return await append_event(tx, "cert", reason, now, serial=serial, agent=row[0])


async def revoke_lineage(tx: Tx, serial: str, reason: str, now: int) -> list[RevocationEvent] | None:
    row = await _locked_certificate(tx, serial)
    lineage = [(serial, row[0], row[1], row[2])]
    seen = {serial}
    # Locked rows cannot be renewed from any more (a renewal takes FOR SHARE on its
    # parent), but one that committed before a row was locked escaped the snapshot
    # of the statement that locked it: look again until a pass finds nothing new.
    descendants = tx.locked(
        DESCENDANTS.format(parent="?") + " ORDER BY c.issued_at, c.serial", "FOR UPDATE OF c"
    )
    while found := [tuple(r) for r in await tx.fetch(descendants, serial) if r[0] not in seen]:
        seen.update(r[0] for r in found)
        lineage += found
    # A held certificate is revoked for good too: a final reason replaces its hold.
    todo = [
        (cert, agent) for cert, agent, revoked_at, was in lineage if rules.revocable(revoked_at, was, reason)
    ]
    await tx.lock_certificates([cert for cert, _ in todo])
    events = []
    for cert, agent in todo:
        await tx.execute(_REVOKE, now, reason, cert)
        events.append(await append_event(tx, "cert", reason, now, serial=cert, agent=agent))
    return events or None


async def revoke_agent(tx: Tx, name: str, reason: str, now: int) -> RevocationEvent | None:
    row = await tx.fetchrow(tx.locked("SELECT revoked_at FROM agents WHERE name=?", "FOR UPDATE"), name)
    if row is None:
        raise rules.no_agent(name)
    rows = await tx.fetch(
        tx.locked(
            "SELECT serial, revoked_at, revocation_reason FROM certificates WHERE agent_name=?"
            " AND (revoked_at IS NULL OR revocation_reason=?) ORDER BY serial",
            "FOR UPDATE",
        ),
        name,
        HOLD,
    )
    # A hold holds the certificates in force; a final revocation also replaces holds.
    serials = [r[0] for r in rows if rules.revocable(r[1], r[2], reason)]
    if (row[0] is not None or reason == HOLD) and not serials:
        return None
    await tx.lock_certificates(serials)
    for serial in serials:
        await tx.execute(_REVOKE, now, reason, serial)
    if reason != HOLD:  # a hold suspends the certificates, it does not bar the name
        await tx.execute("UPDATE agents SET revoked_at=COALESCE(revoked_at, ?) WHERE name=?", now, name)
    return await append_event(tx, "agent", reason, now, serial=",".join(serials), agent=name)


async def revoke_key_version(
    tx: Tx, name: str, version: int, reason: str, now: int, seal: SealFn
) -> tuple[RevocationEvent, int | None] | None:
    """The event, and the version that replaced a compromised current one (or None)."""
    row = await tx.fetchrow(
        tx.locked("SELECT current_version, expires_at FROM keys WHERE name=?", "FOR UPDATE"), name
    )
    current, expires_at = (None, None) if row is None else row
    state = await tx.fetchval("SELECT state FROM key_versions WHERE key_name=? AND version=?", name, version)
    if current is None or state is None:
        raise rules.no_version(name, version)
    new_state = rules.compromised_state(state)
    if new_state is None:
        return None
    await tx.execute(
        "UPDATE key_versions SET state=?, state_changed_at=? WHERE key_name=? AND version=?",
        new_state,
        now,
        name,
        version,
    )
    replaced_by = None
    if version == current:
        # Nothing may keep encrypting under a compromised version. The key expired? Then its
        # replacement only decrypts, as every other version of it (it stays expired).
        replaced_by = current + 1
        expired = expires_at is not None and expires_at <= now
        await add_current_version(tx, name, replaced_by, seal, now, deactivated=expired)
    return await append_event(tx, "key", reason, now, key=(name, version)), replaced_by


async def last_event(
    tx: Tx, kind: str, serial: str | None, agent: str | None, key: tuple[str, int] | None
) -> RevocationEvent | None:
    args: list[object]
    if kind == "cert":
        where, args = "kind='cert' AND serial=?", [serial]
    elif kind == "agent":
        where, args = "kind='agent' AND agent_name=?", [agent]
    else:
        assert key is not None
        where, args = "kind=? AND key_name=? AND key_version=?", [kind, key[0], key[1]]
    newest = " ORDER BY seq DESC LIMIT 1"
    row = await tx.fetchrow(f"SELECT {EVENT_COLUMNS} FROM events WHERE {where}{newest}", *args)  # noqa: S608
    if row is None and kind == "cert":
        # Revoked together with its agent: that event covers it.
        row = await tx.fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='agent' AND ','||serial||',' LIKE ?{newest}",  # noqa: S608
            f"%,{serial},%",
        )
    if row is None and kind == "agent":
        # Its certificates were revoked (or held) one by one: the newest of those events covers it.
        row = await tx.fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='cert'"  # noqa: S608
            f" AND serial IN (SELECT serial FROM certificates WHERE agent_name=?){newest}",
            agent,
        )
    return None if row is None else event_record(row)


async def events_after(tx: Tx, seq: int, limit: int) -> list[RevocationEvent]:
    rows = await tx.fetch(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq>? ORDER BY seq LIMIT ?", seq, limit)  # noqa: S608
    return [event_record(r) for r in rows]


async def last_seq(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT COALESCE(MAX(seq), 0) FROM events"))


async def get_certificate(tx: Tx, serial: str) -> CertificateRecord | None:
    row = await tx.fetchrow(f"SELECT {CERT_COLUMNS} FROM certificates WHERE serial=?", serial)  # noqa: S608
    return None if row is None else cert_record(row)
