"""What the throughput scenarios share: latency details, and their Result against a baseline."""

from __future__ import annotations

import math
from typing import Any

from bench.context import LoadOutcome
from bench.results import Result, summarize_latency

__all__ = ["load_details", "throughput_result"]


def load_details(prefix: str, out: LoadOutcome) -> dict[str, object]:
    lat = summarize_latency(out.latencies)
    details: dict[str, object] = {f"{prefix}p50_ms": lat["p50_ms"], f"{prefix}p99_ms": lat["p99_ms"]}
    if not math.isnan(out.server_cpu_ms_per_op):
        details[f"{prefix}server_cpu_ms_per_op"] = out.server_cpu_ms_per_op
    if not math.isnan(out.client_cpu_ms_per_op):
        details[f"{prefix}client_cpu_ms_per_op"] = out.client_cpu_ms_per_op
    if out.errors:
        details[f"{prefix}errors"] = out.errors
        details[f"{prefix}first_error"] = out.first_error
    return details


def throughput_result(
    scenario: str,
    variant: str,
    metric: str,
    unit: str,
    kms: LoadOutcome,
    baseline: LoadOutcome,
    baseline_name: str,
    min_ratio: float,
    *,
    target: str = "",
    details: dict[str, Any] | None = None,
    samples: dict[str, list[float]] | None = None,
) -> Result:
    """Seed KMS's median rate against the baseline's; passes at min_ratio with no errors.

    A scenario with more conditions (written in ``target``) decides ``passed`` again.
    """
    prefix = baseline_name.split()[0] + "_"
    result = Result(
        scenario=scenario,
        variant=variant,
        metric=metric,
        unit=unit,
        figure=kms.rate,
        baseline_name=baseline_name,
        baseline=baseline.rate,
        target=target or f"ratio >= {min_ratio:.2f}",
        passed=False,
        details={
            **(details or {}),
            "phases": len(kms.rates),
            **load_details("", kms),
            **load_details(prefix, baseline),
        },
        samples=samples or {"seed-kms": kms.latencies, prefix[:-1]: baseline.latencies},
    )
    result.passed = result.ratio >= min_ratio and not kms.errors and not kms.exhausted
    return result
