"""Rate limits per peer address: token buckets with bounded memory, and what counts against them."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["AnonymousFailure", "RateLimiter", "peer_address"]


class AnonymousFailure:
    """Mixin of the errors an anonymous caller earns without presenting a valid secret.

    A malformed or refused join token: counted against its peer address's
    budgets (server/endpoints/auth.py Limits), audited in aggregate (server/endpoints/failures.py).
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

    A full bucket holds ``burst`` events (default: a minute's worth).
    """

    def __init__(
        self, per_minute: float, clock: Callable[[], float] = time.monotonic, *, burst: float | None = None
    ) -> None:
        self._capacity = float(per_minute if burst is None else burst)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

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
        self._buckets[key] = (level - 1, self._clock())
        self._buckets.move_to_end(key)
        if len(self._buckets) > _MAX_KEYS:
            self._buckets.popitem(last=False)
        return 0.0
