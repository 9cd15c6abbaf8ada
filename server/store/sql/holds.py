"""Releasing holds (RFC 5280 certificateHold): the one revocation that can be lifted.

A release lifts exactly what a hold put in force: a certificate's own hold, or
the certificates an agent's hold held and that are still held (one revoked for
good since, or held on its own, stays as it is). Like every revocation, it locks
the certificate rows, then their advisory locks (tx.lock_certificates).
"""

from __future__ import annotations

from kms.errors import FailedPrecondition
from kms.revocation import HOLD, RELEASE
from server.store import rules
from server.store.dialect import Tx
from server.store.records import RevocationEvent
from server.store.rows import EVENT_COLUMNS, event_record
from server.store.sql.events import append_event

__all__ = ["release_agent", "release_certificate"]

_RELEASE = "UPDATE certificates SET revoked_at=NULL, revocation_reason=NULL WHERE serial=?"


async def release_certificate(tx: Tx, serial: str, now: int) -> RevocationEvent:
    """Lifts serial's hold. Raises NotFound, or FailedPrecondition when it is not held."""
    row = await tx.fetchrow(
        tx.locked("SELECT agent_name, revocation_reason FROM certificates WHERE serial=?", "FOR UPDATE"),
        serial,
    )
    if row is None:
        raise rules.no_certificate(serial)
    if row[1] != HOLD:
        raise rules.not_held(f"certificate {serial}", row[1])
    await tx.lock_certificates([serial])
    await tx.execute(_RELEASE, serial)
    return await append_event(tx, "release", RELEASE, now, serial=serial, agent=row[0])


async def release_agent(tx: Tx, name: str, now: int) -> RevocationEvent:
    """Lifts the agent's newest hold. Raises NotFound, or FailedPrecondition when it is not held."""
    agent = await tx.fetchrow(tx.locked("SELECT revoked_at FROM agents WHERE name=?", "FOR UPDATE"), name)
    if agent is None:
        raise rules.no_agent(name)
    row = await tx.fetchrow(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE kind='agent' AND agent_name=? ORDER BY seq DESC LIMIT 1",  # noqa: S608
        name,
    )
    last = None if row is None else event_record(row)
    if last is None or last.reason != HOLD:
        await _held_on_their_own(tx, name)
        raise rules.not_held(f"agent {name!r}", None if last is None else last.reason)
    held = []
    for serial in last.serials():
        reason = await tx.fetchval(
            tx.locked("SELECT revocation_reason FROM certificates WHERE serial=?", "FOR UPDATE"), serial
        )
        if reason == HOLD:
            held.append(serial)
    if not held:
        raise rules.not_held(f"agent {name!r}", None, released=True)
    await tx.lock_certificates(held)
    for serial in held:
        await tx.execute(_RELEASE, serial)
    return await append_event(tx, "release", RELEASE, now, serial=",".join(held), agent=name)


async def _held_on_their_own(tx: Tx, name: str) -> None:
    """No hold of the agent, but of some of its certificates: say which, and how to release them."""
    rows = await tx.fetch(
        "SELECT serial FROM certificates WHERE agent_name=? AND revocation_reason=? ORDER BY serial",
        name,
        HOLD,
    )
    if rows:
        which = (
            f"certificate {rows[0][0]} is held on its own"
            if len(rows) == 1
            else f"certificates {', '.join(r[0] for r in rows)} are held on their own"
        )
        raise FailedPrecondition(
            f"agent {name!r} is not held as a whole, but its {which}:"
            " release each with kms-server release cert SERIAL"
        )
