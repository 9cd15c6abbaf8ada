"""Retiring replaced CAs (issue 19 §1): a retiring generation is retired once no certificate it
signed is still valid (none unexpired and unrevoked, or only held: a hold can be released).

Then it leaves the trust bundle, the CAs the server accepts clients of, OCSP and the CRLs (its
'bundle' event makes every replica re-read the generations, server/ca/trust.py). Checked at
start, after each activation, at the exact moment the latest of its certificates expires, and
every POLL besides (a revocation can end the last valid certificate early). Replicas on one
PostgreSQL may check at once: the store retires each in one transaction that re-checks, so it
is retired (and audited, with its event) once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from server.ca.rotation import generation_fingerprint
from server.clock import Clock, now_seconds
from server.store import AuditEntry, RevocationEvent, Store
from server.store.sql.cas import Retirement

__all__ = ["CARetirement"]

logger = logging.getLogger(__name__)

POLL = timedelta(minutes=10)
RETRY_DELAY = 30.0


class CARetirement:
    def __init__(
        self, store: Store, clock: Clock, publish: Callable[[RevocationEvent], object], poll: timedelta = POLL
    ) -> None:
        self._store = store
        self._clock = clock
        self._publish = publish
        self._poll = poll.total_seconds()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check now (an activation made a generation retiring)."""
        self._wake.set()

    async def heard(self) -> None:
        """A CATrust hook: the generations changed (here or on another replica): check now."""
        self._wake.set()

    async def check(self) -> Retirement:
        """Retires each retiring generation with no valid certificate left; returns what it did."""
        at = now_seconds(self._clock)
        done = await self._store.retire_cas(
            at,
            audit=lambda r: [
                AuditEntry(at, "ca", "ca.retire", f"ca:{g.generation} {generation_fingerprint(g)}")
                for g, _ in r.retired
            ],
        )
        for generation, event in done.retired:
            self._publish(event)
            logger.info(
                "retired CA generation %d: no certificate it signed is still valid",
                generation.generation,
                extra={"seq": event.seq},
            )
        return done

    async def run_forever(self) -> None:
        while True:
            try:
                done = await self.check()
                delay = self._poll
                if done.next_at is not None:  # the moment its last valid certificate expires
                    # (at least a moment: a clock behind the store's must not spin)
                    delay = min(delay, max(0.2, done.next_at - self._clock().timestamp()))
            except Exception as exc:  # noqa: BLE001 - the store unreachable: try again
                logger.error("CA retirement check failed, retrying in %.0f s: %s", RETRY_DELAY, exc)
                delay = RETRY_DELAY
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
