"""What the workers share, the pure parts: the others' open counts (server/workers/tally.py),
buckets told of the others' takes (RateLimiter.consume), the whole /metrics (server/ops/merge.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from server.endpoints.limits import RateLimiter
from server.ops.merge import families_of, merged, packed, unpacked
from server.ops.metrics import _Collected
from server.revocation.feed import StreamGuard
from server.workers.tally import Tally


def test_a_tally_sums_the_others_counts_and_drops_a_worker_that_is_gone() -> None:
    tally = Tally()
    tally.told(1, {"web-1": 2, "web-2": 1})
    tally.told(2, {"web-1": 1})
    assert (tally.count("web-1"), tally.count("web-2"), tally.count("db")) == (3, 1, 0)
    tally.told(1, {"web-1": 0})  # absolute: a repeated or later note replaces, never adds
    tally.told(2, {"web-1": 1})
    assert tally.count("web-1") == 1 and sorted(tally.keys()) == ["web-1", "web-2"]
    tally.replace(1, {"db": 4})  # a joining worker's whole picture of worker 1
    assert (tally.count("web-2"), tally.count("db")) == (0, 4)
    tally.drop(2)
    assert sorted(tally.keys()) == ["db"]


def test_the_stream_guard_counts_the_other_workers_streams_too() -> None:
    guard = StreamGuard()
    guard.elsewhere_agents.told(1, {"web-1": 2, "web-2": 1})
    guard.elsewhere_serials.told(1, {"ab": 2})
    assert guard.open_streams("web-1") == 2 and guard.serial_streams("ab") == 2
    assert guard.agents_online == 2
    assert guard.here(agent="web-1") == 0


def test_a_bucket_spends_what_the_other_workers_took() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0], burst=3)  # one a second, three at once
    taken: list[str] = []
    limiter.on_take = taken.append
    assert limiter.take("10.0.0.1") == 0 and taken == ["10.0.0.1"]
    limiter.consume("10.0.0.1", 4)  # another worker took four: the level is below zero
    assert limiter.take("10.0.0.1") == 3.0  # 2 below one: 3 s at one a second
    assert limiter.depleted(10) == [("10.0.0.1", -2.0)]
    now[0] = 3.0
    assert limiter.take("10.0.0.1") == 0
    limiter.at_most("10.0.0.2", -1.0)  # a joining worker learns another's level
    limiter.at_most("10.0.0.2", 2.0)  # never raised by it
    assert limiter.retry_after("10.0.0.2") == 2.0


def _registry(rpcs: float, watchers: float, expiring: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("kms_rpc", "RPCs", ["method"], registry=registry).labels("/a").inc(rpcs)
    Gauge("kms_watch_streams", "open", registry=registry).set(watchers)
    Gauge("kms_certificates_expiring", "soon", registry=registry).set(expiring)
    return registry


def test_metrics_add_up_over_workers_except_what_the_primary_says_once() -> None:
    primary, other = _registry(3, 1, 7), _registry(2, 4, 7)
    others = [unpacked(packed(families_of(other)))]  # as they cross the hub
    text = generate_latest(_Collected(merged(families_of(primary), others))).decode()
    assert 'kms_rpc_total{method="/a"} 5.0' in text
    assert "kms_watch_streams 5.0" in text
    assert "kms_certificates_expiring 7.0" in text  # from the store, once: not 14
    assert text.count("# TYPE kms_rpc_total counter") == 1
    created = [line for line in text.splitlines() if line.startswith("kms_rpc_created")]
    assert len(created) == 1  # the earliest, not a sum of timestamps
    # Alone, the primary's exposition is what one process shows.
    alone = generate_latest(_Collected(merged(families_of(primary), [])))
    assert alone == generate_latest(primary)


def test_top_rates_add_the_other_workers_totals_and_never_go_negative() -> None:
    from server.ops.metrics import Metrics
    from server.ops.rates import Rates

    rates = Rates(Metrics())
    rates.sample(0.0, (10.0, 0.0, 0.0))
    rates.sample(2.0, (30.0, 4.0, 0.0))  # another worker served 20 RPCs and 4 releases in 2 s
    rates.sample(3.0, (0.0, 0.0, 0.0))  # it restarted: its totals start again from zero
    assert list(rates.rpcs) == [10.0, 10.0, 0.0] and list(rates.releases) == [2.0, 2.0, 0.0]
