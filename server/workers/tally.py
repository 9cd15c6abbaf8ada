"""What the other workers hold open, by key: each worker's counts as it last said them, and their sum.

Pure bookkeeping for server/workers/shared.py: a worker notes its own counts
(absolute, so a note can be repeated or superseded, never double counted), the
others keep them here per worker, and drop a worker's counts once it is gone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import KeysView, Mapping

__all__ = ["Tally"]


class Tally:
    """Other workers' open counts per key (an agent, a serial, a peer address) and their sum."""

    def __init__(self) -> None:
        self._by_worker: dict[int, dict[str, int]] = {}
        self._sum: Counter[str] = Counter()

    def count(self, key: str) -> int:
        """The open count of key on every other worker together."""
        return self._sum.get(key, 0)

    def keys(self) -> KeysView[str]:
        """The keys with at least one open on another worker."""
        return self._sum.keys()

    def told(self, worker: int, counts: Mapping[str, int]) -> None:
        """Worker's counts now, for the keys it names (the others stay as it last said)."""
        held = self._by_worker.setdefault(worker, {})
        for key, count in counts.items():
            self._add(key, count - held.get(key, 0))
            if count > 0:
                held[key] = count
            else:
                held.pop(key, None)

    def replace(self, worker: int, counts: Mapping[str, int]) -> None:
        """Worker's counts now, all of them (keys it does not name: none open)."""
        self.drop(worker)
        self.told(worker, counts)

    def drop(self, worker: int) -> None:
        """Worker is gone: what it held is closed with it."""
        for key, count in self._by_worker.pop(worker, {}).items():
            self._add(key, -count)

    def _add(self, key: str, delta: int) -> None:
        if not delta:
            return
        total = self._sum.get(key, 0) + delta
        if total > 0:
            self._sum[key] = total
        else:
            self._sum.pop(key, None)
