"""RPCs, key releases and enrollments per second: the sparklines of `kms-server top`.

Sampled from the metrics' running totals when a view is built (no task of its
own: nothing is sampled while nobody looks), one value per second elapsed,
the last ``keep`` seconds kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from prometheus_client import Counter

from server.ops.metrics import Metrics

__all__ = ["Rates"]


def _total(counter: Counter) -> float:
    """An unlabelled counter's value, through its public collect()."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0


class Rates:
    def __init__(self, metrics: Metrics, keep: int = 120) -> None:
        self._metrics = metrics
        self._keep = keep
        self.rpcs: deque[float] = deque(maxlen=keep)
        self.releases: deque[float] = deque(maxlen=keep)
        self.enrollments: deque[float] = deque(maxlen=keep)
        self._last: tuple[float, tuple[float, float, float]] | None = None

    def totals(self) -> tuple[float, float, float]:
        """This process's running totals: RPCs, key releases, enrollments."""
        m = self._metrics
        m.apply_pending()
        return float(m.rpc_total), _total(m.key_releases), _total(m.enrollments)

    def sample(self, monotonic: float, others: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        """Appends the rates since the last sample, once per whole second elapsed (none before one).

        others: the other workers' totals, added to this one's. They never go down
        (server/workers/figures.py keeps a late worker's last totals and a departed one's);
        should they, that second's rate shows 0, never a negative one.
        """
        here = self.totals()
        totals = (here[0] + others[0], here[1] + others[1], here[2] + others[2])
        if self._last is None:
            self._last = (monotonic, totals)
            return
        elapsed = monotonic - self._last[0]
        if elapsed < 1.0:
            return
        seconds = min(int(elapsed), self._keep)
        for series, now, before in zip(
            (self.rpcs, self.releases, self.enrollments), totals, self._last[1], strict=True
        ):
            series.extend([max(0.0, now - before) / elapsed] * seconds)
        self._last = (monotonic, totals)
