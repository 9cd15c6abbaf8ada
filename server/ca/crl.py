"""The CRL: rebuilt from the store on every revocation and before it expires."""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding

from kms.revocation import CRL_REASONS
from server.ca.authority import CertificateAuthority
from server.clock import Clock
from server.store import Store

__all__ = ["CrlPublisher", "crl_this_update"]

logger = logging.getLogger(__name__)

CRL_VALIDITY = timedelta(hours=24)
# How far thisUpdate may lie before the issue time (when no entry is newer): clock skew.
BACKDATE = timedelta(seconds=60)
# How long refresh_forever waits after a failed refresh before trying again.
RETRY_DELAY = 30.0


def crl_this_update(now: datetime, revocation_dates: list[datetime]) -> datetime:
    """A CRL's thisUpdate, in whole seconds as encoded: never before its newest entry, never after now.

    A CRL dated before a revocation it lists contradicts itself (the outside check of issue 18
    found entries dated up to 60 s after a thisUpdate backdated 60 s). Within that rule it is
    backdated up to BACKDATE, so relying parties whose clocks run a little slow do not find it
    "not yet valid" (right after a revocation the newest entry is now, and that margin is gone).
    An entry dated after now (a replica whose clock runs ahead) does not move it into the
    future for everyone: thisUpdate stays now.
    """
    now = now.replace(microsecond=0)
    newest = max(revocation_dates, default=now - BACKDATE)
    return min(max(now - BACKDATE, newest.replace(microsecond=0)), now)


class CrlPublisher:
    def __init__(
        self, ca: CertificateAuthority, store: Store, clock: Clock, validity: timedelta = CRL_VALIDITY
    ) -> None:
        self._ca = ca
        self._store = store
        self._clock = clock
        self._validity = validity
        self._der: bytes | None = None
        self._next_update: datetime | None = None
        self._this_update: datetime | None = None  # of the last CRL issued here
        self._lock = asyncio.Lock()
        self._stale = True

    def invalidate(self) -> None:
        """Marks the CRL stale; the next reader (or the refresher) rebuilds it."""
        self._stale = True

    async def current(self) -> bytes:
        """The current CRL (DER), rebuilt if a revocation happened or half its validity passed."""
        async with self._lock:
            now = self._clock()
            due = self._next_update is None or now >= self._next_update - self._validity / 2
            if self._der is None or self._stale or due:
                self._stale = False
                self._der = await self._build(now)
            return self._der

    async def _build(self, now: datetime) -> bytes:
        # Number and contents in one transaction: replicas sharing a store never issue
        # the same number twice, and a higher number never lists less.
        number, records = await self._store.next_crl()
        revoked = [
            (
                int(r.serial, 16),
                datetime.fromtimestamp(r.revoked_at or 0, UTC),
                CRL_REASONS[r.revocation_reason or "unspecified"],
            )
            for r in records
        ]
        this_update = crl_this_update(now, [when for _, when, _ in revoked])
        # Never before the CRL this server issued last: a client that keeps the newest CRL by
        # thisUpdate must not keep an older one (a release within BACKDATE of a revocation would
        # otherwise date the newer CRL first).
        if self._this_update is not None:
            this_update = max(this_update, self._this_update)
        self._this_update = this_update
        self._next_update = min(this_update + self._validity, self._ca.certificate.not_valid_after_utc)
        sign = functools.partial(self._ca.sign_crl, revoked, number, this_update, self._next_update)
        crl = await asyncio.to_thread(sign) if self._ca.slow_signing else sign()  # a token: not on the loop
        logger.info("CRL issued", extra={"crl_number": number, "entries": len(revoked)})
        return crl.public_bytes(Encoding.DER)

    async def refresh_forever(self) -> None:
        """Keeps a fresh CRL ready (so HTTP and GetCRL never serve an expired one)."""
        while True:
            try:
                await self.current()
            except Exception as exc:  # noqa: BLE001 - one failure (a token, the store) must not end the loop
                logger.error("CRL refresh failed, retrying in %.0f s: %s", RETRY_DELAY, _one_line(exc))
                await asyncio.sleep(RETRY_DELAY)
                continue
            await asyncio.sleep(max(60.0, self._validity.total_seconds() / 4))


def _one_line(exc: BaseException) -> str:
    """What failed, without a traceback: the error's own one-line message (they carry no secret)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
