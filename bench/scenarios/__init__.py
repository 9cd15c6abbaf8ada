"""The scenarios, by name, in the order a full run takes them; each module has ``run(ctx) -> [Result]``.

A module with ``NEEDS_POSTGRESQL = True`` gets a private PostgreSQL cluster
(``ctx.postgres_cluster()``), started while the run sets up; where there are
no PostgreSQL binaries it is skipped with the reason, which is not an error.
So is one whose module's ``unavailable()`` gives a reason (a tool this machine
lacks), asked before the run sets up, or that raises ``BenchSkip``.

``ON_REQUEST`` scenarios run only when named (``python -m bench scaling``):
they start several servers or a peer product, too much for every run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bench.context import BenchContext
from bench.results import Result

__all__ = ["ALL_SCENARIOS", "ON_REQUEST", "SCENARIOS", "needs_postgresql", "scenario", "unavailable"]

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
ON_REQUEST: dict[str, str] = {
    "scaling": "bench.scenarios.scaling",
    "openbao": "bench.peers.openbao",
    "ab": "bench.scenarios.ab",
}
ALL_SCENARIOS = {**SCENARIOS, **ON_REQUEST}


def scenario(name: str) -> Callable[[BenchContext], list[Result]]:
    run: Callable[[BenchContext], list[Result]] = importlib.import_module(ALL_SCENARIOS[name]).run
    return run


def needs_postgresql(name: str) -> bool:
    return bool(getattr(importlib.import_module(ALL_SCENARIOS[name]), "NEEDS_POSTGRESQL", False))


def unavailable(name: str) -> str | None:
    """Why this machine cannot run the scenario (a missing tool), or None."""
    check: Callable[[], str | None] | None = getattr(
        importlib.import_module(ALL_SCENARIOS[name]), "unavailable", None
    )
    return check() if check is not None else None
