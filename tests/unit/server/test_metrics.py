"""server/ops/metrics.py: unary calls' outcomes, applied in batches, are what every read sees."""

from __future__ import annotations

import re

from server.ops.metrics import PENDING_LIMIT, Metrics
from server.ops.rates import Rates

FETCH = "/kms.v1.Keys/FetchKey"


def _value(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert found is not None, sample
    return float(found.group(1))


def test_a_scrape_sees_every_call_answered_before_it() -> None:
    metrics = Metrics()
    metrics.unary_done(FETCH, "OK", 0.003, metrics.key_releases)
    metrics.unary_done(FETCH, "PERMISSION_DENIED", 0.2, None)
    text = metrics.exposition().decode()
    assert _value(text, f'kms_rpc_started_total{{method="{FETCH}"}}') == 2
    assert _value(text, f'kms_rpc_total{{code="OK",method="{FETCH}"}}') == 1
    assert _value(text, f'kms_rpc_total{{code="PERMISSION_DENIED",method="{FETCH}"}}') == 1
    assert _value(text, f'kms_rpc_seconds_count{{method="{FETCH}"}}') == 2
    assert _value(text, f'kms_rpc_seconds_bucket{{le="0.005",method="{FETCH}"}}') == 1
    assert _value(text, "kms_key_releases_total") == 1
    assert metrics.rpc_total == 2
    # Applied once: a second scrape counts nothing twice.
    assert _value(metrics.exposition().decode(), f'kms_rpc_started_total{{method="{FETCH}"}}') == 2


def test_pending_outcomes_are_bounded_and_the_rates_see_them() -> None:
    metrics = Metrics()
    for _ in range(PENDING_LIMIT):
        metrics.unary_done(FETCH, "OK", 0.001, metrics.key_releases)
    assert metrics.rpc_total == PENDING_LIMIT  # applied without any read: nothing grows unbounded
    metrics.unary_done(FETCH, "OK", 0.001, metrics.key_releases)
    assert Rates(metrics).totals() == (PENDING_LIMIT + 1, PENDING_LIMIT + 1, 0.0)
