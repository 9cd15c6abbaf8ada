"""Each other worker's last answer to one question: the primary's whole-server figures never dip.

An answer may be missing from one ask (the worker was slow, or is still
starting): its last one stands in for it, so a sum over workers does not dip
for one scrape and come back (which Prometheus reads as a counter reset, and
`top` as a burst). A worker that leaves (the hub's ``worker.left``), or whose
place a restarted one takes (``worker.joined``), hands its last answer to
``departed`` (the caller keeps what must stay in the sums) and is forgotten:
the new process's answers count from its own zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from server.workers.hub import WORKER_JOINED, WORKER_LEFT
from server.workers.link import WorkerLink
from server.workers.protocol import Message

__all__ = ["LastAnswers"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class LastAnswers(Generic[T]):
    """Args:
    link: this worker's link (the primary's).
    topic: the question asked.
    read: makes an answer's body what is kept (raises ValueError, KeyError or TypeError if it cannot).
    departed: takes the last answer of a worker that is gone.
    """

    def __init__(
        self, link: WorkerLink, topic: str, read: Callable[[Any], T], departed: Callable[[T], None]
    ) -> None:
        self._link = link
        self._topic = topic
        self._read = read
        self._departed = departed
        self._last: dict[int, tuple[int, T]] = {}  # by worker index: (the ask it answered, what it said)
        self._eras: dict[int, int] = {}  # by worker index: how many times one left or took its place
        self._asks = 0
        link.on_cast(WORKER_LEFT, self._gone)
        link.on_cast(WORKER_JOINED, self._gone)

    async def ask(self, *, within: float | None = None, **body: Any) -> list[T]:
        """Every other worker's answer: this ask's, or the last one it gave while it lives."""
        self._asks += 1
        number, eras = self._asks, dict(self._eras)
        for said in await self._link.ask(self._topic, within=within, **body):
            index = int(said["from"])
            if said.get("body") is None or self._eras.get(index, 0) != eras.get(index, 0):
                continue  # it could not say; or it is a process gone since (its last is in the base)
            kept = self._last.get(index)
            if kept is not None and kept[0] > number:
                continue  # a later ask's answer came first: the newer figures stay
            try:
                self._last[index] = (number, self._read(said["body"]))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("worker %d's answer on %s is unreadable: %s", index, self._topic, exc)
        return [answer for _, answer in self._last.values()]

    def _gone(self, message: Message) -> None:
        index = int(message["from"])
        self._eras[index] = self._eras.get(index, 0) + 1
        kept = self._last.pop(index, None)
        if kept is not None:
            self._departed(kept[1])
