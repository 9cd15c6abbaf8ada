"""The primary's whole-server figures (server/workers/figures.py) over a scripted link: a worker's
answer missing from one ask, a worker leaving and one taking its place never make a sum go down;
and /metrics asks at most once in flight and once a second (server/ops/coalesce.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from server.ops.coalesce import Coalesced
from server.ops.merge import families_of, packed
from server.ops.metrics import Metrics
from server.ops.observe import Elsewhere
from server.ops.rates import Rates
from server.workers.figures import OBSERVE_BOUND, share_figures
from server.workers.hub import WORKER_JOINED, WORKER_LEFT
from server.workers.protocol import Message


class _Link:
    """The primary's link: each ask takes the next scripted answers (a callable runs first, as
    casts that arrive while the ask is out)."""

    def __init__(self) -> None:
        self.role = SimpleNamespace(primary=True)
        self.script: list[tuple[Callable[[], None] | None, list[Message]]] = []
        self.asked: list[tuple[str, float | None]] = []
        self._handlers: dict[str, list[Callable[[Message], None]]] = {}

    def on_ask(self, topic: str, answer: object) -> None:
        pass

    def on_cast(self, topic: str, handler: Callable[[Message], None]) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def cast_from(self, index: int, topic: str) -> None:
        for handler in self._handlers.get(topic, ()):
            handler({"op": "cast", "topic": topic, "from": index})

    async def ask(self, topic: str, *, within: float | None = None, **body: Any) -> list[Any]:
        self.asked.append((topic, within))
        meanwhile, answers = self.script.pop(0)
        if meanwhile is not None:
            meanwhile()
        return answers


def _worker(rpcs: float, watchers: float) -> str:
    registry = CollectorRegistry()
    Counter("kms_rpc", "RPCs", ["method"], registry=registry).labels("/a").inc(rpcs)
    Gauge("kms_watch_streams", "open", registry=registry).set(watchers)
    return packed(families_of(registry))


def _primary() -> tuple[_Link, Metrics, SimpleNamespace]:
    link, metrics = _Link(), Metrics()
    metrics.rpcs.labels("/a", "OK").inc(0)  # the primary's own series, at zero
    observer = SimpleNamespace(elsewhere=None)
    share_figures(SimpleNamespace(services=SimpleNamespace(metrics=metrics, observer=observer)), link)  # type: ignore[arg-type]
    return link, metrics, observer


def _scrape(metrics: Metrics) -> tuple[float, float]:
    """(kms_rpc_total of /a, kms_watch_streams) of the whole server."""

    async def once() -> str:
        assert metrics.others is not None
        return (await metrics._merged()).decode()

    text = asyncio.run(once())
    rpcs = sum(float(v) for v in re.findall(r'^kms_rpc_total\{[^}]*method="/a"[^}]*\} (\S+)$', text, re.M))
    (watchers,) = re.findall(r"^kms_watch_streams (\S+)$", text, re.M)
    return rpcs, float(watchers)


def test_metrics_sums_keep_a_late_worker_and_a_departed_one() -> None:
    link, metrics, _ = _primary()
    one = {"from": 1, "body": _worker(100000, 3)}
    link.script = [
        (None, [one, {"from": 2, "body": _worker(50, 1)}]),
        (None, [{"from": 2, "body": _worker(60, 1)}]),  # worker 1 too slow this time
        (None, [{"from": 1, "body": _worker(100030, 3)}, {"from": 2, "body": _worker(60, 1)}]),
        # Worker 1 answered, then died before the answers came: that answer is of a process gone.
        (lambda: link.cast_from(1, WORKER_LEFT), [{"from": 1, "body": _worker(100040, 3)}]),
        (None, []),  # worker 2 late too
        (None, [{"from": 1, "body": _worker(5, 0)}]),  # the restarted worker 1, from its own zero
    ]
    scrapes = [_scrape(metrics) for _ in range(4)]
    link.cast_from(1, WORKER_JOINED)  # its place is taken: nothing more of the old process
    scrapes += [_scrape(metrics) for _ in range(2)]
    rpcs = [r for r, _ in scrapes]
    assert rpcs == [100050, 100060, 100090, 100090, 100090, 100095]
    assert rpcs == sorted(rpcs)  # never down: no counter reset for Prometheus to read
    # A gauge is no sum over time: the departed worker's open streams are gone with it.
    assert [w for _, w in scrapes] == [4, 4, 4, 1, 1, 1]


def test_top_rates_stay_even_when_an_answer_is_missing_or_a_worker_leaves() -> None:
    link, metrics, observer = _primary()

    def totals(rpcs: float) -> Message:
        return {"from": 1, "body": {"totals": [rpcs, 0, 0], "seen": {"web-1": 7}}}

    link.script = [
        (None, [totals(100000)]),
        (None, [totals(100010)]),
        (None, []),  # late
        (None, [totals(100030)]),
        (lambda: link.cast_from(1, WORKER_LEFT), []),  # gone: what it counted stays
        (None, [totals(10)]),  # its successor
    ]
    rates = Rates(metrics)

    async def views() -> list[Elsewhere]:
        seen = []
        for second in range(6):
            elsewhere = await observer.elsewhere(["web-1"])
            rates.sample(float(second), elsewhere.totals)
            seen.append(elsewhere)
        return seen

    seen = asyncio.run(views())
    assert list(rates.rpcs) == [10.0, 0.0, 20.0, 0.0, 10.0]  # before: [10.0, 0.0, 100030.0, 0.0, 10.0]
    assert [e.seen for e in seen] == [{"web-1": 7}] * 6
    assert {within for _, within in link.asked} == {OBSERVE_BOUND}


def test_concurrent_scrapes_share_one_merge_reused_for_a_second() -> None:
    now, made = [0.0], [0]

    async def make() -> int:
        made[0] += 1
        await asyncio.sleep(0.01)
        return made[0]

    async def main() -> None:
        shared = Coalesced(make, 1.0, clock=lambda: now[0])
        first = asyncio.ensure_future(shared.get())
        await asyncio.sleep(0)
        first.cancel()  # one scrape gives up: the others still get their answer
        assert await asyncio.gather(*(shared.get() for _ in range(5))) == [1] * 5
        now[0] = 0.9
        assert await shared.get() == 1
        now[0] = 1.0
        assert await shared.get() == 2

    asyncio.run(main())
    assert made == [2]


def test_a_flood_of_scrapes_asks_the_other_workers_once() -> None:
    metrics, asked = Metrics(), [0]

    async def others() -> list[Any]:
        asked[0] += 1
        await asyncio.sleep(0.01)
        return []

    async def main() -> None:
        metrics.others = others
        pages = await asyncio.gather(*(metrics.whole() for _ in range(20)))
        pages.append(await metrics.whole())  # within the second: the same page
        assert len(set(pages)) == 1

    asyncio.run(main())
    assert asked == [1]
