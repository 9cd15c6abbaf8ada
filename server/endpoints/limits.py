"""Rate limits per peer address: token buckets with bounded memory, and what counts against them."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kms.errors import KmsError, ResourceExhausted, Unauthenticated
from server.endpoints.methods import Budget

__all__ = ["AnonymousFailure", "Limits", "RateLimiter", "peer_address"]


class AnonymousFailure:
    """Mixin of the errors an anonymous caller earns without presenting a valid secret.

    A malformed or refused join token: counted against its peer address's
    budgets (Limits below), audited in aggregate (server/endpoints/failures.py).
    A caller that presents a valid token or certificate never raises one, so
    it is never refused because of others at its address.
    """

    kind = "anonymous"


_MAX_KEYS = 100_000


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678", "unix:...")."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


class RateLimiter:
    """Allows ``per_minute`` events per key, refilled continuously; the oldest keys are forgotten first.

    A full bucket holds ``burst`` events (default: a minute's worth). Of several
    workers (server/workers/shared.py), each is told of what the others took
    (``consume``) and tells them of what it takes (``on_take``): one budget per
    key for the whole server.
    """

    def __init__(
        self, per_minute: float, clock: Callable[[], float] = time.monotonic, *, burst: float | None = None
    ) -> None:
        self._capacity = float(per_minute if burst is None else burst)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self.on_take: Callable[[str], None] | None = None  # told of each event allowed

    def _level(self, key: str) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._capacity, now))
        return min(self._capacity, tokens + (now - at) * self._rate)

    def retry_after(self, key: str) -> float:
        """Seconds until one more event is allowed (0 if allowed now); consumes nothing."""
        level = self._level(key)
        return 0.0 if level >= 1 else (1 - level) / self._rate

    def take(self, key: str) -> float:
        """Consumes one event if allowed; returns 0, or the seconds to wait (and consumes nothing)."""
        level = self._level(key)
        if level < 1:
            return (1 - level) / self._rate
        self._put(key, level - 1)
        if self.on_take is not None:
            self.on_take(key)
        return 0.0

    def consume(self, key: str, count: float) -> None:
        """Events taken elsewhere (another worker): the level may go below zero, a longer wait."""
        self._put(key, self._level(key) - count)

    def depleted(self, limit: int) -> list[tuple[str, float]]:
        """The levels now of at most limit keys below a full bucket, the lowest first."""
        levels = [(key, self._level(key)) for key in list(self._buckets)]
        return sorted(((k, v) for k, v in levels if v < self._capacity), key=lambda kv: kv[1])[:limit]

    def at_most(self, key: str, level: float) -> None:
        """Lowers key's level to level now, if it is higher (a joining worker learns the others')."""
        if level < self._level(key):
            self._put(key, level)

    def _put(self, key: str, level: float) -> None:
        self._buckets[key] = (level, self._clock())
        self._buckets.move_to_end(key)
        if len(self._buckets) > _MAX_KEYS:
            self._buckets.popitem(last=False)


@dataclass
class Limits:
    """Failed enrollment attempts and refused join tokens per peer address; open streams per agent.

    The address budgets count only attempts that fail without a valid secret
    (AnonymousFailure): a valid join token enrolls, and a valid certificate is
    served, whatever others at the same address (a NAT, a proxy) have done.
    """

    enrollments: RateLimiter
    auth_failures: RateLimiter
    max_streams: int

    def over_budget(self, budget: Budget | None, address: str, failure: KmsError) -> ResourceExhausted | None:
        """Counts a failed anonymous attempt; the answer to give instead once its address is over budget.

        Args:
            budget: the method's own budget (server/endpoints/methods.py), drawn on first.
            address: the caller's peer address.
            failure: the refusal; a refused token (Unauthenticated) also draws on auth_failures.
        """
        wait = self.enrollments.take(address) if budget is Budget.ENROLLMENTS else 0.0
        if not wait and isinstance(failure, Unauthenticated):
            wait = self.auth_failures.take(address)
        if not wait:
            return None
        return ResourceExhausted(
            f"too many failed enrollment attempts from {address}: check the join token, then retry in"
            f" {math.ceil(wait)}s (a valid token is accepted even now)"
        )

    def check_streams(self, open_now: int) -> None:
        if open_now >= self.max_streams:
            raise ResourceExhausted(
                f"this agent already holds {open_now} open streams, all its certificates together (the limit): "
                "close one, then retry"
            )
