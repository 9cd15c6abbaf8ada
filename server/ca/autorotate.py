"""Automatic CA rotation (issue 19 §1, the ``ca_rotate_at`` setting), the way SPIRE rotates its CA.

Once the active CA has lived ``ca_rotate_at`` of its life (0.5: half way), the server prepares
the next one, as ``kms-server ca rotate`` would; once a prepared CA has been published for
``ca_propagation``, it activates it, as ``kms-server ca activate`` would. Both are audited with
the actor ``ca-rotation``. It looks once a minute, and at the exact due time when that comes
sooner. Replicas may all look at once: the store prepares one generation and activates it
once (the second replica is refused, and says nothing of it; any other refusal, such as a
token that cannot make the key, is logged as an error, once per message). Off by default: with the default
ten-year CA, an operator turns it on knowingly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509

from kms.errors import FailedPrecondition
from server.ca.rotation import CARotation
from server.store.sql.cas import CAGeneration, RotationRace

__all__ = ["ACTOR", "AutoRotation", "next_step"]

logger = logging.getLogger(__name__)

ACTOR = "ca-rotation"
LOOK_EVERY = 60.0  # seconds between looks, at most
RETRY_DELAY = 30.0  # after a failure (a token down, the store unreachable)


def next_step(
    generations: list[CAGeneration], fraction: float, propagation: timedelta, now: datetime
) -> tuple[str | None, datetime | None]:
    """What is due now ("prepare", "activate" or None) and, when nothing is, when the next step is
    (None: not before something else changes). Read from the store's generations, not from the CA
    this replica issues with: a replica that has not followed an activation yet must not take the
    old CA to be due again."""
    prepared = [g for g in generations if g.state == "prepared"]
    if prepared:
        ready = datetime.fromtimestamp(prepared[0].created_at, now.tzinfo) + propagation
        return ("activate", None) if now >= ready else (None, ready)
    active = [g for g in generations if g.state == "active"]
    if not active:
        return None, None
    cert = x509.load_pem_x509_certificate(active[0].certificate.encode())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    due = start + (end - start) * fraction
    return ("prepare", None) if now >= due else (None, due)


class AutoRotation:
    def __init__(
        self,
        rotation: CARotation,
        fraction: float,
        propagation: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._rotation = rotation
        self._fraction = fraction
        self._propagation = propagation
        self._clock = clock
        self._refusals: set[str] = set()  # each refusal other than a race, logged once

    async def step(self) -> datetime | None:
        """Does what is due; returns when to look again (None: at the next regular look)."""
        now = self._clock()
        generations = await self._rotation.generations()
        what, when = next_step(generations, self._fraction, self._propagation, now)
        try:
            if what == "prepare":
                done = await self._rotation.rotate(None, actor=ACTOR)
                logger.info(
                    "prepared CA generation %d: the active CA has lived %.0f%% of its life",
                    done.generation,
                    self._fraction * 100,
                )
            elif what == "activate":
                done = await self._rotation.activate(False, actor=ACTOR)
                logger.info(
                    "activated CA generation %d: it was published for ca-propagation", done.generation
                )
        except RotationRace:
            return None  # another replica did it first (or the state moved): look again
        except FailedPrecondition as exc:
            if exc.message not in self._refusals:
                self._refusals.add(exc.message)
                logger.error("automatic CA rotation could not %s the next CA: %s", what, exc.message)
            return None
        return when

    async def run_forever(self) -> None:
        while True:
            try:
                when = await self.step()
                wait = LOOK_EVERY if when is None else (when - self._clock()).total_seconds()
            except Exception as exc:  # noqa: BLE001 - one failure must not end the loop
                logger.error(
                    "automatic CA rotation failed, retrying in %.0f s: %s: %s",
                    RETRY_DELAY,
                    type(exc).__name__,
                    exc,
                )
                wait = RETRY_DELAY
            await asyncio.sleep(min(max(wait, 1.0), LOOK_EVERY))
