"""The scenarios, by name, in the order a full run takes them; each module has ``run(ctx) -> [Result]``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bench.context import BenchContext
from bench.results import Result

__all__ = ["SCENARIOS", "scenario"]

SCENARIOS: dict[str, str] = {
    "fetch-key": "bench.scenarios.fetch_key",
    "enroll": "bench.scenarios.enroll",
    "fan-out": "bench.scenarios.fan_out",
    "exchange": "bench.scenarios.exchange",
    "mixed": "bench.scenarios.mixed",
}


def scenario(name: str) -> Callable[[BenchContext], list[Result]]:
    run: Callable[[BenchContext], list[Result]] = importlib.import_module(SCENARIOS[name]).run
    return run
