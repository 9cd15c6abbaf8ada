"""Result records, the statistics behind them, and their two renderings (table and JSON).

A result is one figure of Seed KMS beside the same figure of the bare-stack
baseline measured in the same run; the ratio is what is compared with the
target, because absolute figures move with the machine's load.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Result", "median", "percentile", "render_json", "render_table", "summarize_latency"]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else math.nan


def summarize_latency(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    return {
        "p50_ms": percentile(seconds, 50) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": (max(seconds) if seconds else math.nan) * 1000,
    }


@dataclass
class Result:
    """One figure against its in-run baseline.

    ``ratio`` is always figure / baseline; ``higher_is_better`` says which way
    the target reads (throughput up, latency down). ``passed`` is decided by
    the scenario, which may combine several checks (written in ``target``).
    """

    scenario: str
    variant: str
    metric: str
    unit: str
    figure: float
    baseline_name: str
    baseline: float
    target: str
    passed: bool
    higher_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    # Raw samples for --plot only (kept out of the JSON: it is meant to stay readable).
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.scenario}[{self.variant}]" if self.variant else self.scenario

    @property
    def ratio(self) -> float:
        if not self.baseline or math.isnan(self.baseline) or math.isnan(self.figure):
            return math.nan
        return self.figure / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "variant": self.variant,
            "name": self.name,
            "metric": self.metric,
            "unit": self.unit,
            "figure": _finite(self.figure),
            "baseline_name": self.baseline_name,
            "baseline": _finite(self.baseline),
            "ratio": _finite(self.ratio),
            "target": self.target,
            "pass": self.passed,
            "details": {k: _finite(v) if isinstance(v, float) else v for k, v in self.details.items()},
        }


def _finite(value: float) -> float | None:
    # JSON has no NaN: a missing figure is null.
    return None if math.isnan(value) or math.isinf(value) else round(value, 4)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render_table(results: Sequence[Result]) -> str:
    """A fixed-width table for people; the JSON carries the same figures and more."""
    headers = ["SCENARIO", "METRIC", "SEED KMS", "BASELINE", "RATIO", "TARGET", "PASS"]
    rows = [
        [
            r.name,
            f"{r.metric} ({r.unit})",
            _fmt(r.figure),
            f"{_fmt(r.baseline)} {r.baseline_name}",
            _fmt(r.ratio),
            r.target,
            "yes" if r.passed else "NO",
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    notes = [
        f"  {r.name}: "
        + ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in r.details.items())
        for r in results
        if r.details
    ]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def render_json(results: Sequence[Result], meta: dict[str, Any]) -> str:
    return json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=2) + "\n"
