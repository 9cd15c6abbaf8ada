"""Emergency CA rotation (issue 19 §1, ``--revoke-old``): the active CA is taken to be compromised.

In one transaction the prepared generation becomes active, every certificate the old one
signed that is still valid (in force or held) is revoked with reason cACompromise (an
event each, so every replica refuses them and closes their streams), and the old CA is
retired at once: no longer trusted, out of the trust bundle, with a 'bundle' event. A
compromised key vouches for nothing, so nothing waits for its certificates to expire.
Agents are not barred: each re-enrolls with a new join token (its old name is free,
since none of its certificates is valid any more).
"""

from __future__ import annotations

from kms.errors import FailedPrecondition
from kms.revocation import CA_COMPROMISE, HOLD
from server.store.dialect import Tx
from server.store.records import Audit, RevocationEvent
from server.store.sql.cas import CAGeneration, Expected, activate_ca, serial_of
from server.store.sql.events import append_event
from server.store.sql.methods import Methods

__all__ = ["CACompromiseMethods", "Compromise"]

REASON = CA_COMPROMISE


async def _revoke_generation(tx: Tx, generation: int, now: int) -> list[RevocationEvent]:
    rows = await tx.fetch(
        tx.locked(
            "SELECT serial, agent_name FROM certificates WHERE ca_generation=? AND not_after>?"
            " AND (revoked_at IS NULL OR revocation_reason=?) ORDER BY issued_at, serial",
            "FOR UPDATE",
        ),
        generation,
        now,
        HOLD,
    )
    await tx.lock_certificates([r[0] for r in rows])
    events = []
    for serial, agent in rows:
        await tx.execute(
            "UPDATE certificates SET revoked_at=?, revocation_reason=? WHERE serial=?", now, REASON, serial
        )
        events.append(await append_event(tx, "cert", REASON, now, serial=serial, agent=agent))
    return events


Compromise = tuple[CAGeneration, list[RevocationEvent]]


async def activate_revoking_old(tx: Tx, now: int, expected: Expected = None) -> Compromise:
    """Activates the prepared generation at once, revokes what the old active one signed and
    retires it. The events: the activation's 'bundle', one 'cert' per certificate, the
    retirement's 'bundle' (reason "retired"). Raises FailedPrecondition as activate_ca does."""
    # The active row locked first, and the old generation read from it: a concurrent activation
    # (another replica) commits before, and this one then finds the generation it made active.
    old = await tx.fetchrow(
        tx.locked("SELECT generation, certificate FROM ca_generations WHERE state = 'active'", "FOR UPDATE")
    )
    if old is None:
        raise FailedPrecondition("the store has no active CA: start the server once to adopt it")
    active, activated = await activate_ca(tx, now, None, expected)  # raises when none is prepared
    revoked = await _revoke_generation(tx, int(old[0]), now)
    await tx.execute(
        "UPDATE ca_generations SET state='retired', retired_at=? WHERE generation=?", now, old[0]
    )
    retired = await append_event(tx, "bundle", "retired", now, serial=serial_of(old[1]))
    return active, [activated, *revoked, retired]


class CACompromiseMethods(Methods):
    async def activate_ca_revoking_old(
        self, now: int, *, audit: Audit = None, expected: Expected = None
    ) -> Compromise:
        """The prepared CA activated at once, the old one's certificates revoked and the old one
        retired, in one transaction (see the module). Raises FailedPrecondition when none is
        prepared, or it is not expected (see activate_ca)."""
        return await self._change(lambda tx: activate_revoking_old(tx, now, expected), audit)
