"""Meta, join tokens, enrollment and agents' certificates.

An agent's row is what enrollments, renewals and revocations of one name take
turns on (row locks on PostgreSQL): two machines never hold one identity, and
a renewal never outlives a revocation that committed first.
"""

from __future__ import annotations

import json

from kms.revocation import HOLD
from server.store import rules
from server.store.dialect import Tx
from server.store.records import AgentRecord, CertificateRecord, Enrollment, JoinTokenRecord, RevocationEvent
from server.store.rows import AGENT_COLUMNS, DESCENDANTS, TOKEN_COLUMNS, agent_record, token_record
from server.store.sql.events import append_event, revoked_certificates

__all__ = [
    "add_certificate",
    "add_join_token",
    "create_ca",
    "enroll",
    "get_agent",
    "get_agent_by_serial",
    "get_join_token",
    "get_meta",
    "is_empty",
    "is_known_agent",
    "list_agents",
    "next_crl",
    "set_meta",
    "unrevoked_serials",
    "renewed_from",
]


def _agents_with_latest(tx: Tx) -> str:
    """Each agent with its newest certificate."""
    return (
        f"SELECT {AGENT_COLUMNS} FROM agents a JOIN certificates c"  # noqa: S608 - constant columns
        " ON c.serial = (SELECT serial FROM certificates WHERE agent_name = a.name"
        f" ORDER BY issued_at DESC, {tx.insert_order} DESC LIMIT 1)"
    )


async def _valid_serials(tx: Tx, name: str, now: int) -> list[str]:
    """The name's certificates that still authenticate at now (unrevoked, unexpired), locked for update.

    A held one counts (a release makes it authenticate again): a second machine does not
    enroll under a held name without --replace, which revokes the held ones for good.
    """
    rows = await tx.fetch(
        tx.locked(
            "SELECT serial FROM certificates WHERE agent_name=? AND (revoked_at IS NULL OR revocation_reason=?)"
            " AND not_after>? ORDER BY serial",
            "FOR UPDATE",
        ),
        name,
        HOLD,
        now,
    )
    return [r[0] for r in rows]


async def _check_generation(tx: Tx, generation: int) -> None:
    """Refuses a certificate of a retired CA generation (signed before an emergency rotation, or by
    a replica that has not followed an activation). FOR SHARE: an activation or retirement (which
    locks the row FOR UPDATE) commits first and is seen here, or waits for this certificate, and then
    revokes it with the others."""
    row = await tx.fetchrow(
        tx.locked("SELECT retired_at FROM ca_generations WHERE generation=?", "FOR SHARE"), generation
    )
    if row is not None and row[0] is not None:
        raise rules.ca_retired(generation)


async def _insert_certificate(
    tx: Tx, cert: CertificateRecord, token_id: str | None, groups_json: str, renewed_from: str | None = None
) -> None:
    await tx.execute(
        "INSERT INTO certificates(serial, agent_name, not_before, not_after, der, issued_at, token_id, groups_json,"
        " renewed_from, ca_generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *(cert.serial, cert.agent_name, cert.not_before, cert.not_after, cert.der, cert.issued_at),
        *(token_id, groups_json, renewed_from, cert.ca_generation),
    )


async def get_meta(tx: Tx, key: str) -> str | None:
    value = await tx.fetchval("SELECT value FROM meta WHERE key=?", key)
    return None if value is None else str(value)


async def set_meta(tx: Tx, key: str, value: str, replace: bool) -> str:
    await tx.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = CASE WHEN ? THEN excluded.value ELSE meta.value END",
        key,
        value,
        replace,
    )
    return str(await tx.fetchval("SELECT value FROM meta WHERE key=?", key))


async def create_ca(tx: Tx, key: str, cert: str) -> tuple[str, str]:
    # A replica racing us waits on our uncommitted certificate row, then inserts
    # nothing and reads what we committed (each statement sees the latest commit).
    if await tx.fetchval(
        "INSERT INTO meta(key, value) VALUES ('ca_cert', ?) ON CONFLICT (key) DO NOTHING RETURNING value",
        cert,
    ):
        await tx.execute(
            "INSERT INTO meta(key, value) VALUES ('ca_key', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
        )
    stored = {
        r[0]: str(r[1])
        for r in await tx.fetch("SELECT key, value FROM meta WHERE key IN ('ca_key', 'ca_cert')")
    }
    return stored.get("ca_key", ""), stored["ca_cert"]


async def next_crl(tx: Tx) -> tuple[int, list[CertificateRecord]]:
    # The number's row stays locked until COMMIT, and the list is read after
    # it: the holder of the next number reads a list at least as new.
    number = await tx.fetchval(
        "INSERT INTO meta(key, value) VALUES ('crl_number', '1')"
        " ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) RETURNING value"
    )
    return int(number), await revoked_certificates(tx)


async def is_empty(tx: Tx) -> bool:
    for table in ("join_tokens", "certificates", "keys"):
        if await tx.fetchval(f"SELECT 1 FROM {table} LIMIT 1"):  # noqa: S608 - constant names
            return False
    return True


async def add_join_token(tx: Tx, token: JoinTokenRecord, allow_reenroll: bool, replace: bool) -> bool:
    revoked = await tx.fetchrow("SELECT revoked_at FROM agents WHERE name=?", token.name)
    if revoked and revoked[0] is not None and not allow_reenroll:
        raise rules.name_revoked(token.name)
    if not replace and await _valid_serials(tx, token.name, token.created_at):
        raise rules.name_in_use(token.name)
    await tx.execute(
        "INSERT INTO join_tokens(token_id, secret_hash, name, groups_json, created_at, expires_at,"
        " allow_reenroll, replace_existing) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        *(token.token_id, token.secret_hash, token.name, json.dumps(list(token.groups))),
        *(token.created_at, token.expires_at, int(allow_reenroll), int(replace)),
    )
    return True


async def get_join_token(tx: Tx, token_id: str) -> JoinTokenRecord | None:
    row = await tx.fetchrow(f"SELECT {TOKEN_COLUMNS} FROM join_tokens WHERE token_id=?", token_id)  # noqa: S608
    return None if row is None else token_record(row)


async def enroll(
    tx: Tx, token_id: str, secret_hash: bytes, now: int, cert: CertificateRecord
) -> Enrollment | None:
    # The conditional UPDATE is the single-use guarantee: a second enrollment
    # (on any replica) waits for the first's row lock, then finds used_at set.
    token = await tx.fetchrow(
        "UPDATE join_tokens SET used_at=?, used_by_serial=?"
        " WHERE token_id=? AND secret_hash=? AND used_at IS NULL AND expires_at>? AND name=?"
        " RETURNING groups_json, allow_reenroll, replace_existing",
        *(now, cert.serial, token_id, secret_hash, now, cert.agent_name),
    )
    if token is None:
        return None
    await _check_generation(tx, cert.ca_generation)  # raises: rolled back, the token stays unused
    groups_json, allow, replace = token
    name = cert.agent_name
    # FOR UPDATE: renewals (FOR SHARE) and revocations of this name wait for us, or we for them.
    revoked = await tx.fetchrow(tx.locked("SELECT revoked_at FROM agents WHERE name=?", "FOR UPDATE"), name)
    if revoked and revoked[0] is not None and not allow:
        raise rules.reenroll_refused(name)  # rolls back: the token stays unused
    # The upsert locks the name's row (a racing first enrollment of the name waits
    # here for the other to commit), so the check below sees every certificate
    # committed before it; a raise below rolls the upsert back too.
    created = await tx.fetchval(
        "INSERT INTO agents(name, created_at, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET updated_at=excluded.updated_at, revoked_at=NULL RETURNING created_at",
        *(name, now, now),
    )
    # Checked again here: the token may predate the certificate (two tokens for one name).
    valid = await _valid_serials(tx, name, now)
    # As every revocation does, the certificates' advisory locks come after their rows
    # (the same order, so no deadlock with one): a key release by a certificate this
    # enrollment supersedes commits before it, or reads it revoked and is refused.
    await tx.lock_certificates(valid)
    if valid and not replace:
        raise rules.name_in_use(name, at_enroll=True)
    superseded: list[RevocationEvent] = []
    for serial in valid:
        await tx.execute(
            "UPDATE certificates SET revoked_at=?, revocation_reason='superseded' WHERE serial=?", now, serial
        )
        superseded.append(await append_event(tx, "cert", "superseded", now, serial=serial, agent=name))
    await _insert_certificate(tx, cert, token_id, groups_json)
    return Enrollment(AgentRecord(name, tuple(json.loads(groups_json)), created, cert), tuple(superseded))


async def add_certificate(
    tx: Tx, cert: CertificateRecord, groups: tuple[str, ...], renewed_from: str, not_renewed_since: int | None
) -> bool:
    await _check_generation(tx, cert.ca_generation)  # first: an activation locks that row first too
    # The agent's row FOR NO KEY UPDATE: renewals of one agent (on any replica) take
    # turns, so the second sees the first's certificate below. A revocation on any
    # replica either committed before (and is seen here) or waits for this renewal
    # (and then revokes its certificate too): FOR SHARE on the certificate renewed from.
    agent = await tx.fetchval(
        tx.locked("SELECT revoked_at IS NULL FROM agents WHERE name=?", "FOR NO KEY UPDATE"),
        cert.agent_name,
    )
    old = await tx.fetchrow(
        tx.locked(
            "SELECT revoked_at IS NULL, revocation_reason FROM certificates WHERE serial=?", "FOR SHARE"
        ),
        renewed_from,
    )
    if old is not None and old[1] == HOLD:  # held meanwhile: refused, but not for good
        raise rules.caller_revoked(renewed_from, HOLD)
    if not agent or old is None or not old[0]:
        raise rules.renewal_refused(cert.agent_name, renewed_from)
    if not_renewed_since is not None:
        last = await tx.fetchval(
            "SELECT MAX(issued_at) FROM certificates WHERE agent_name=? AND renewed_from IS NOT NULL",
            cert.agent_name,
        )
        if last is not None and last > not_renewed_since:
            raise rules.renewed_too_soon(cert.agent_name, last, not_renewed_since, cert.issued_at)
    await _insert_certificate(tx, cert, None, json.dumps(list(groups)), renewed_from)
    await tx.execute("UPDATE agents SET updated_at=? WHERE name=?", cert.issued_at, cert.agent_name)
    return True


async def get_agent_by_serial(tx: Tx, serial: str) -> AgentRecord | None:
    row = await tx.fetchrow(
        f"SELECT {AGENT_COLUMNS} FROM certificates c JOIN agents a ON a.name = c.agent_name WHERE c.serial=?",  # noqa: S608
        serial,
    )
    return None if row is None else agent_record(row)


async def get_agent(tx: Tx, name: str) -> AgentRecord | None:
    row = await tx.fetchrow(_agents_with_latest(tx) + " WHERE a.name=?", name)
    return None if row is None else agent_record(row)


async def list_agents(tx: Tx) -> list[AgentRecord]:
    return [agent_record(r) for r in await tx.fetch(_agents_with_latest(tx) + " ORDER BY a.name")]


async def unrevoked_serials(tx: Tx, name: str, now: int) -> list[str]:
    """The name's certificates neither revoked nor held, nor expired at now (no lock: a read)."""
    rows = await tx.fetch(
        "SELECT serial FROM certificates WHERE agent_name=? AND revoked_at IS NULL AND not_after>? ORDER BY serial",
        name,
        now,
    )
    return [r[0] for r in rows]


async def is_known_agent(tx: Tx, name: str, now: int) -> bool:
    return bool(
        await tx.fetchval(
            "SELECT EXISTS (SELECT 1 FROM agents WHERE name=?)"
            " OR EXISTS (SELECT 1 FROM join_tokens WHERE name=? AND used_at IS NULL AND expires_at>?)",
            *(name, name, now),
        )
    )


async def renewed_from(tx: Tx, serial: str) -> list[str]:
    """The certificates renewed from serial, at any remove (what its keyCompromise also revokes)."""
    rows = await tx.fetch(DESCENDANTS.format(parent="?") + " ORDER BY c.serial", serial)
    return [r[0] for r in rows]
