"""The CRLs, one per live CA generation (server/ca/trust.py: the active one, each retiring one, and
any retired one while a certificate it signed is unexpired): rebuilt from the store on every
revocation and before they expire."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding

from kms.errors import NotFound
from kms.revocation import CRL_REASONS
from server.ca.authority import CertificateAuthority
from server.ca.issuer import Issuer
from server.ca.trust import CATrust
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


@dataclass
class _Crl:
    """One generation's CRL as last issued here."""

    der: bytes | None = None
    next_update: datetime | None = None
    this_update: datetime | None = None
    stale: bool = True


class CrlPublisher:
    """One CRL per live CA generation (the active one, each retiring one, and a retired one while a
    certificate it signed is unexpired: RFC 5280, issue 19 §1), each
    signed by that generation's key and listing the revoked and held certificates it signed.

    ``current(N)`` is generation N's (served at /crl/N, the distribution point of the
    certificates N ≥ 2 issues); ``current()`` is the one at /crl and GetCRL, the distribution
    point of generation 1's certificates: generation 1's while it is live (until its last
    certificate expires), then the active one's.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        store: Store,
        clock: Clock,
        validity: timedelta = CRL_VALIDITY,
        trust: CATrust | None = None,
    ) -> None:
        self._ca = ca
        self._trust = trust  # the live generations; None: the CA's current one only
        self._store = store
        self._clock = clock
        self._validity = validity
        self._crls: dict[int, _Crl] = {}
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Marks the CRLs stale; the next reader (or the refresher) rebuilds them."""
        for crl in self._crls.values():
            crl.stale = True

    def _live(self) -> dict[int, Issuer]:
        if self._trust is not None:
            return dict(self._trust.issuers)
        current = self._ca.current
        return {current.generation: current}

    async def current(self, generation: int | None = None) -> bytes:
        """A CRL (DER), rebuilt if a revocation happened or half its validity passed. Raises
        NotFound when generation is not live (unknown, prepared or retired)."""
        live = self._live()
        if generation is None:
            generation = 1 if 1 in live else self._ca.current.generation
        issuer = live.get(generation)
        if issuer is None:
            raise NotFound(f"CA generation {generation} has no CRL: it is not live (kms-server ca status)")
        async with self._lock:
            crl = self._crls.setdefault(generation, _Crl())
            now = self._clock()
            due = crl.next_update is None or now >= crl.next_update - self._validity / 2
            if crl.der is None or crl.stale or due:
                crl.stale = False
                crl.der = await self._build(issuer, crl, now)
            return crl.der

    async def _build(self, issuer: Issuer, crl: _Crl, now: datetime) -> bytes:
        # Number and contents in one transaction: replicas sharing a store never issue
        # the same number twice, and a higher number never lists less. The number is shared by
        # the generations: each one's CRLs still have increasing numbers.
        number, records = await self._store.next_crl()
        revoked = [
            (
                int(r.serial, 16),
                datetime.fromtimestamp(r.revoked_at or 0, UTC),
                CRL_REASONS[r.revocation_reason or "unspecified"],
            )
            for r in records
            if r.ca_generation == issuer.generation
        ]
        this_update = crl_this_update(now, [when for _, when, _ in revoked])
        # Never before the CRL this server issued last: a client that keeps the newest CRL by
        # thisUpdate must not keep an older one (a release within BACKDATE of a revocation would
        # otherwise date the newer CRL first).
        if crl.this_update is not None:
            this_update = max(this_update, crl.this_update)
        crl.this_update = this_update
        crl.next_update = min(this_update + self._validity, issuer.cert.not_valid_after_utc)
        sign = functools.partial(self._ca.sign_crl, revoked, number, this_update, crl.next_update, issuer)
        signed = await asyncio.to_thread(sign) if issuer.slow else sign()  # a token: not on the loop
        logger.info(
            "CRL issued",
            extra={"crl_number": number, "entries": len(revoked), "ca_generation": issuer.generation},
        )
        return signed.public_bytes(Encoding.DER)

    async def refresh_forever(self) -> None:
        """Keeps a fresh CRL of each live generation ready (so HTTP and GetCRL never serve an expired one)."""
        while True:
            try:
                for generation in sorted(self._live()):
                    await self.current(generation)
            except Exception as exc:  # noqa: BLE001 - one failure (a token, the store) must not end the loop
                logger.error("CRL refresh failed, retrying in %.0f s: %s", RETRY_DELAY, _one_line(exc))
                await asyncio.sleep(RETRY_DELAY)
                continue
            await asyncio.sleep(max(60.0, self._validity.total_seconds() / 4))


def _one_line(exc: BaseException) -> str:
    """What failed, without a traceback: the error's own one-line message (they carry no secret)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
