"""Refused attempts, summed up per peer address: a bounded log and an aggregate audit trail.

Anybody can send a bad join token, an undecodable request or an idle
connection as fast as the network allows. Logging each one (a traceback for a
decode error, before this) lets anybody fill the disk, and a synced audit row
each lets anybody load the store. So each refusal is only counted here:

- the log gets at most one line per peer address per ``interval``: the first
  refusal of the interval, with the number of refusals from that address left
  out since its previous line (a burst that stops gets its count logged in one
  line when the next interval closes);
- the audit trail gets one record per address per interval that saw refusals
  of anonymous callers, holding their count by kind, through the AuditBatcher.

Memory is bounded: beyond ``max_addresses`` addresses in one interval, further
ones are counted together under the address ``*``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

from server.clock import Clock, now_seconds, system_clock
from server.store import AuditEntry

__all__ = ["AUDIT_ACTION", "FailureReport"]

logger = logging.getLogger(__name__)

# The action of the aggregate records; the actor is "peer:<address>".
AUDIT_ACTION = "auth.refused"
_OTHERS = "*"


class FailureReport:
    """Counts refusals per peer address; see the module docstring.

    Args:
        record: where the interval's audit records go (AuditBatcher.add); None: not audited.
        interval: seconds per interval.
        clock: monotonic seconds (injected in tests).
        wall: the time written into audit records.
        max_addresses: addresses tracked apart per interval; the rest count as "*".
    """

    def __init__(
        self,
        record: Callable[[AuditEntry], None] | None,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Clock = system_clock,
        max_addresses: int = 10_000,
    ) -> None:
        self._record = record  # AuditBatcher.add: batched, not a synced row each
        self._interval = interval
        self._clock = clock
        self._wall = wall
        self._max = max_addresses
        self._logged_at: dict[str, float] = {}  # address -> when its last line was logged
        self._unlogged: Counter[str] = Counter()  # address -> refusals since its last line
        self._counts: dict[str, Counter[str]] = {}  # this interval's anonymous refusals, by kind

    def _key(self, table: Mapping[str, object], address: str) -> str:
        return address if address in table or len(table) < self._max else _OTHERS

    def note(self, address: str, kind: str, detail: str, *, anonymous: bool = True) -> None:
        """Counts one refusal; logs it if its address had no line this interval.

        Args:
            address: the peer's address (the real one, behind the enrollment gate).
            kind: a short tag for the audit record, like "bad-token".
            detail: what was refused, for the log (never a secret).
            anonymous: whether the caller had no valid identity (then it is audited here).
        """
        if anonymous:
            counts = self._counts.setdefault(self._key(self._counts, address), Counter())
            counts[kind] += 1
        now = self._clock()
        key = self._key(self._logged_at, address)
        last = self._logged_at.get(key)
        if last is not None and now - last < self._interval:
            self._unlogged[key] += 1
            return
        self._logged_at[key] = now
        logger.info(
            "refused: %s",
            detail,
            extra={"peer": address, "kind": kind, "unlogged_since_last": self._unlogged.pop(key, 0)},
        )

    def close_interval(self) -> int:
        """Audits the interval that ends now (one record per address); returns the number of records."""
        now = self._clock()
        for address, at in list(self._logged_at.items()):
            if now - at < self._interval:
                continue
            unlogged = self._unlogged.pop(address, 0)
            if unlogged:  # the rest of a burst that stopped: its count still reaches the log
                self._logged_at[address] = now
                logger.info(
                    "refused: %s more attempts", unlogged, extra={"peer": address, "unlogged_since_last": 0}
                )
            else:
                del self._logged_at[address]  # forgotten: its next refusal is logged at once
        counts, self._counts = self._counts, {}
        if self._record is None:
            return 0
        at = now_seconds(self._wall)
        seconds = round(self._interval)
        for address, kinds in counts.items():
            by_kind = " ".join(f"{kind}:{n}" for kind, n in sorted(kinds.items()))
            self._record(
                AuditEntry(
                    at,
                    f"peer:{address}",
                    AUDIT_ACTION,
                    f"attempts:{kinds.total()} {by_kind} interval:{seconds}s",
                    "denied",
                )
            )
        return len(counts)

    async def run_forever(self) -> None:
        """Closes an interval every ``interval`` seconds (cancel to stop; call close_interval once more)."""
        while True:
            await asyncio.sleep(self._interval)
            self.close_interval()
