"""The scenarios, by name, in the order a full run takes them; each module has ``run(ctx) -> [Result]``.

A module with ``NEEDS_POSTGRESQL = True`` gets a private PostgreSQL cluster
(``ctx.postgres_cluster()``), started while the run sets up; where there are
no PostgreSQL binaries it is skipped with the reason, which is not an error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bench.context import BenchContext
from bench.results import Result

__all__ = ["SCENARIOS", "needs_postgresql", "scenario"]

SCENARIOS: dict[str, str] = {
    "fetch-key": "bench.scenarios.fetch_key",
    "enroll": "bench.scenarios.enroll",
    "fan-out": "bench.scenarios.fan_out",
    "fan-out-replicas": "bench.scenarios.fan_out_replicas",
    "exchange": "bench.scenarios.exchange",
    "mixed": "bench.scenarios.mixed",
    "key-schedule": "bench.scenarios.key_schedule",
    "top": "bench.scenarios.top",
}


def scenario(name: str) -> Callable[[BenchContext], list[Result]]:
    run: Callable[[BenchContext], list[Result]] = importlib.import_module(SCENARIOS[name]).run
    return run


def needs_postgresql(name: str) -> bool:
    return bool(getattr(importlib.import_module(SCENARIOS[name]), "NEEDS_POSTGRESQL", False))
