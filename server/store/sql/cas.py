"""The CA's generations (schema step 12, ca_migration.py): adopting the first, preparing the next,
activating it, listing them. SqlStore's methods about them are CAMethods.

A generation that activation replaced no longer issues but is still trusted until every
certificate it signed has expired: "retiring". The schema's states are prepared, active and
retired, so it is stored as 'retired' with retired_at NULL (retired_at is set when it is no
longer trusted), and read back as "retiring".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509

from kms.errors import FailedPrecondition
from kms.revocation import HOLD
from kms.times import iso, span
from server.store.dialect import Tx
from server.store.records import Audit, RevocationEvent
from server.store.sql.events import append_event
from server.store.sql.methods import Methods

__all__ = [
    "CAGeneration",
    "CAMethods",
    "Expected",
    "NewGeneration",
    "RotationRace",
    "Retirement",
    "prepared_already",
    "serial_of",
]


class RotationRace(FailedPrecondition):
    """Another replica (or admin) moved the rotation first: one prepared already, none prepared, or
    another one prepared than the one checked. Automatic rotation says nothing of these."""


# The prepared generation a caller checked (its number and certificate PEM): activation refuses
# another one (cancelled and prepared again meanwhile).
Expected = tuple[int, str] | None

# A certificate still valid for retirement: unexpired and unrevoked, or only held (a hold can be
# released, and then the certificate works again).
_VALID = "not_after > ? AND (revoked_at IS NULL OR revocation_reason = ?)"

_COLUMNS = (
    "generation, state, key_type, certificate, cross_certificate, sealed_key, key_uri,"
    " created_at, activated_at, retired_at"
)


@dataclass(frozen=True)
class NewGeneration:
    """A CA made before the transaction that prepares it (its key sealed, or in a token)."""

    key_type: str
    certificate: str  # PEM, self-signed
    cross_certificate: str  # PEM: its key certified by the active CA (RFC 4210 newWithOld)
    sealed_key: bytes | None = None
    key_uri: str | None = None  # a PKCS#11 URI (a key in a token)
    # PEM of the CA that made the cross-certificate: it must be the store's active one.
    cross_signed_by: str | None = None


@dataclass(frozen=True)
class CAGeneration:
    generation: int
    state: str  # "prepared", "active", "retiring" (trusted, not issuing) or "retired"
    key_type: str
    certificate: str  # PEM
    cross_certificate: str | None  # PEM; None for the first generation
    sealed_key: bytes | None  # None: the deployment's own CA key (generation 1), or key_uri
    key_uri: str | None
    created_at: int
    activated_at: int | None
    retired_at: int | None
    valid_certificates: int = 0  # unrevoked, unexpired certificates it signed (as of the listing)


def _generation(r: Any, valid: int = 0) -> CAGeneration:
    sealed = None if r[5] is None else bytes(r[5])
    state = "retiring" if r[1] == "retired" and r[9] is None else r[1]
    return CAGeneration(r[0], state, r[2], r[3], r[4], sealed, r[6], r[7], r[8], r[9], valid)


async def adopt_ca(tx: Tx, certificate: str, key_type: str, key_uri: str | None, now: int) -> bool:
    """Makes the deployment's CA generation 1, active, unless any generation exists."""
    if await tx.fetchval("SELECT COUNT(*) FROM ca_generations"):
        return False
    await tx.execute(
        "INSERT INTO ca_generations(generation, state, key_type, certificate, key_uri, created_at, activated_at)"
        " VALUES (1, 'active', ?, ?, ?, ?, ?) ON CONFLICT (generation) DO NOTHING",
        key_type,
        certificate,
        key_uri,
        now,
        now,
    )
    return True


async def generations(tx: Tx, now: int | None) -> list[CAGeneration]:
    rows = await tx.fetch(f"SELECT {_COLUMNS} FROM ca_generations ORDER BY generation")  # noqa: S608
    if now is None:
        return [_generation(r) for r in rows]
    counts = {
        r[0]: int(r[1])
        for r in await tx.fetch(
            f"SELECT ca_generation, COUNT(*) FROM certificates WHERE {_VALID} GROUP BY ca_generation",  # noqa: S608
            now,
            HOLD,
        )
    }
    return [_generation(r, counts.get(r[0], 0)) for r in rows]


async def prepare_ca(tx: Tx, new: NewGeneration, now: int) -> tuple[CAGeneration, RevocationEvent]:
    """Adds new as the prepared generation and a 'bundle' event. Raises FailedPrecondition when one is
    prepared already (replicas take turns on the active row: the second sees the first's)."""
    row = await tx.fetchrow(
        tx.locked("SELECT generation, certificate FROM ca_generations WHERE state = 'active'", "FOR UPDATE")
    )
    if row is None:
        raise FailedPrecondition("the store has no active CA: start the server once to adopt it")
    if new.cross_signed_by is not None and new.cross_signed_by != row[1]:
        # A replica started with another CA would prepare a CA no agent can verify, and block
        # the slot for the right one.
        raise FailedPrecondition(
            f"this kms-server's CA is not the store's active CA (generation {row[0]}): start it with"
            " the deployment's CA (the data dir or database every replica shares) before rotating"
        )
    prepared = await tx.fetchval("SELECT generation FROM ca_generations WHERE state = 'prepared'")
    if prepared is not None:
        raise prepared_already(int(prepared))
    generation = int(await tx.fetchval("SELECT MAX(generation) FROM ca_generations")) + 1
    await tx.execute(
        "INSERT INTO ca_generations(generation, state, key_type, certificate, cross_certificate, sealed_key,"
        " key_uri, created_at) VALUES (?, 'prepared', ?, ?, ?, ?, ?, ?)",
        generation,
        new.key_type,
        new.certificate,
        new.cross_certificate,
        new.sealed_key,
        new.key_uri,
        now,
    )
    row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM ca_generations WHERE generation = ?", generation)  # noqa: S608
    serial = serial_of(new.certificate)
    return _generation(row), await append_event(tx, "bundle", "", now, serial=serial)


async def activate_ca(
    tx: Tx, now: int, ready_at: int | None, expected: Expected = None
) -> tuple[CAGeneration, RevocationEvent]:
    """The prepared generation becomes active, the active one retiring (trusted, no longer issuing),
    with a 'bundle' event (reason "activated"). ready_at: the latest created_at the prepared one may
    have (its propagation period over; None: at once). expected: the prepared generation the caller
    checked (None: any). Raises FailedPrecondition."""
    active = await tx.fetchval(
        tx.locked("SELECT generation FROM ca_generations WHERE state = 'active'", "FOR UPDATE")
    )
    row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM ca_generations WHERE state = 'prepared'")  # noqa: S608
    if active is None or row is None:
        raise RotationRace("no CA generation is prepared: kms-server ca rotate prepares one")
    prepared = _generation(row)
    if expected is not None and (prepared.generation, prepared.certificate) != expected:
        raise RotationRace(
            f"the prepared CA generation changed while it was being activated (cancelled and prepared"
            f" again: generation {prepared.generation} now): check kms-server ca status, then activate again"
        )
    if ready_at is not None and prepared.created_at > ready_at:
        raise FailedPrecondition(
            f"CA generation {prepared.generation} was prepared {span(now - prepared.created_at)} ago: agents"
            f" may not have its trust bundle yet; activate it at {iso(now + prepared.created_at - ready_at)}"
            f" (in {span(prepared.created_at - ready_at)}: ca-propagation), or with --now"
        )
    if prepared.sealed_key is None and prepared.key_uri is None:  # its key: sealed, or in a token
        raise FailedPrecondition(f"CA generation {prepared.generation} has no key this server can use")
    await tx.execute("UPDATE ca_generations SET state = 'retired' WHERE generation = ?", active)
    await tx.execute(
        "UPDATE ca_generations SET state = 'active', activated_at = ? WHERE generation = ?",
        now,
        prepared.generation,
    )
    by_generation = f"SELECT {_COLUMNS} FROM ca_generations WHERE generation = ?"  # noqa: S608
    row = await tx.fetchrow(by_generation, prepared.generation)
    event = await append_event(tx, "bundle", "activated", now, serial=serial_of(prepared.certificate))
    return _generation(row), event


@dataclass(frozen=True)
class Retirement:
    """What one retirement check did: the generations it retired (each with its 'bundle' event),
    and when the next retiring one's last valid certificate expires (None: none is retiring)."""

    retired: tuple[tuple[CAGeneration, RevocationEvent], ...]
    next_at: int | None


async def retire_cas(tx: Tx, now: int) -> Retirement:
    """Retires each retiring generation none of whose certificates is still valid (retired_at set,
    a 'bundle' event, reason "retired"). The retiring rows are locked first, so replicas checking
    at once take turns, and the second finds them retired."""
    rows = await tx.fetch(
        tx.locked(
            f"SELECT {_COLUMNS} FROM ca_generations WHERE state = 'retired' AND retired_at IS NULL"  # noqa: S608
            " ORDER BY generation",
            "FOR UPDATE",
        )
    )
    retired, next_at = [], None
    for row in rows:
        generation = int(row[0])
        last = await tx.fetchval(
            f"SELECT MAX(not_after) FROM certificates WHERE ca_generation = ? AND {_VALID}",  # noqa: S608
            generation,
            now,
            HOLD,
        )
        if last is not None:
            next_at = int(last) if next_at is None else min(next_at, int(last))
            continue
        await tx.execute("UPDATE ca_generations SET retired_at = ? WHERE generation = ?", now, generation)
        event = await append_event(tx, "bundle", "retired", now, serial=serial_of(row[3]))
        done = await tx.fetchrow(f"SELECT {_COLUMNS} FROM ca_generations WHERE generation = ?", generation)  # noqa: S608
        retired.append((_generation(done), event))
    return Retirement(tuple(retired), next_at)


async def cancel_ca(tx: Tx, now: int) -> tuple[CAGeneration, RevocationEvent]:
    """Removes the prepared generation, with a 'bundle' event (reason "cancelled"), so agents drop
    it from their trust bundle. Raises FailedPrecondition when none is prepared."""
    # The active row first, as activate_ca and prepare_ca lock it: a cancel and an activation on
    # two replicas take turns, and the second sees what the first did.
    await tx.fetchval(tx.locked("SELECT generation FROM ca_generations WHERE state = 'active'", "FOR UPDATE"))
    row = await tx.fetchrow(
        tx.locked(f"SELECT {_COLUMNS} FROM ca_generations WHERE state = 'prepared'", "FOR UPDATE")  # noqa: S608
    )
    if row is None:
        raise FailedPrecondition(
            "no CA generation is prepared: there is nothing to cancel (kms-server ca status)"
        )
    prepared = _generation(row)
    await tx.execute("DELETE FROM ca_generations WHERE generation = ?", prepared.generation)
    return prepared, await append_event(
        tx, "bundle", "cancelled", now, serial=serial_of(prepared.certificate)
    )


def prepared_already(generation: int) -> FailedPrecondition:
    return RotationRace(
        f"CA generation {generation} is prepared already: activate it before preparing another"
        " (kms-server ca status shows it)"
    )


def serial_of(pem: str) -> str:
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


class CAMethods(Methods):
    async def adopt_ca(self, certificate: str, key_type: str, key_uri: str | None, now: int) -> bool:
        """Records the deployment's CA as generation 1, active, when no generation is recorded
        (the first start after the upgrade, or of a new deployment); returns whether it did."""
        return await self._change(lambda tx: adopt_ca(tx, certificate, key_type, key_uri, now))

    async def ca_last_not_after(self, generation: int) -> int | None:
        """When the last certificate generation signed expires (None: it signed none)."""
        return await self._read(
            lambda tx: tx.fetchval(
                "SELECT MAX(not_after) FROM certificates WHERE ca_generation = ?", generation
            )
        )

    async def ca_bundle_version(self) -> int:
        """The sequence number of the newest 'bundle' event (0: none): the version of the trust bundle
        the CA generations make (read before them, it never claims more than they show)."""
        seq = await self._read(
            lambda tx: tx.fetchval("SELECT seq FROM events WHERE kind = 'bundle' ORDER BY seq DESC LIMIT 1")
        )
        return int(seq or 0)

    async def ca_generations(self, now: int | None) -> list[CAGeneration]:
        """Every generation, oldest first, with how many valid certificates each signed as of now
        (None: not counted)."""
        return await self._read(lambda tx: generations(tx, now))

    async def prepare_ca(
        self, new: NewGeneration, now: int, *, audit: Audit = None
    ) -> tuple[CAGeneration, RevocationEvent]:
        """Prepares the next generation, with its 'bundle' event, in one transaction.

        Raises FailedPrecondition when one is prepared already.
        """
        return await self._change(lambda tx: prepare_ca(tx, new, now), audit)

    async def activate_ca(
        self, now: int, ready_at: int | None, *, audit: Audit = None, expected: Expected = None
    ) -> tuple[CAGeneration, RevocationEvent]:
        """Activates the prepared generation (the active one retiring), with its 'bundle' event, in
        one transaction. Raises FailedPrecondition when none is prepared, it is not ready_at, or it
        is not expected (the generation number and certificate the caller checked)."""
        return await self._change(lambda tx: activate_ca(tx, now, ready_at, expected), audit)

    async def retire_cas(self, now: int, *, audit: Audit = None) -> Retirement:
        """Retires, in one transaction, each retiring generation with no valid certificate left."""
        return await self._change(lambda tx: retire_cas(tx, now), audit)

    async def cancel_ca(self, now: int, *, audit: Audit = None) -> tuple[CAGeneration, RevocationEvent]:
        """Removes the prepared generation, with its 'bundle' event. Raises FailedPrecondition when
        none is prepared."""
        return await self._change(lambda tx: cancel_ca(tx, now), audit)
