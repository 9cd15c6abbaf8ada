"""key-schedule: how many scheduled rotations one server makes on time, against manual rotations.

N keys (10,000; 300 at --scale small) on the embedded SQLite store (default durability), all
with a rotation due within the same past minute. Seed KMS: the server's own scheduler
(server/keys/scheduler.py) does one pass, reading the due keys in pages and committing one
locked, re-checked transaction per key (each with its audit record and `rotate` event),
32 in flight. Baseline: the same number of `key rotate` transactions through KeyService on a
twin store, 32 in flight: what a rotation costs without the schedule (no due read, no
re-check, no due time moved). Both run in this process on the real store and sealer, so
the CPU per key is the scheduler's and SQLite's thread's together. Both log their INFO line
per rotation to a file, as the server does to stderr.

The figure is keys rotated per second; keys_per_minute is how many keys due in one minute
the scheduler can rotate within that minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench.context import BenchContext
from bench.results import Result
from server.deployment.sealing import Sealer
from server.keys import KeyService
from server.keys.scheduler import KeyScheduler
from server.store import SqliteStore, Store

__all__ = ["run"]

DAY = 86_400
IN_FLIGHT = 32
MIN_RATIO = 0.5


def _count(ctx: BenchContext) -> int:
    return 300 if ctx.scale.name == "small" else 10_000


async def _gather_in_batches(steps: list[object], size: int = IN_FLIGHT) -> None:
    for start in range(0, len(steps), size):
        await asyncio.gather(*steps[start : start + size])  # type: ignore[arg-type]


@contextlib.contextmanager
def _server_log(path: Path) -> Iterator[None]:
    """The server's INFO lines go to path while measuring (a server pays for its log too)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    server = logging.getLogger("server")
    level = server.level
    server.addHandler(handler)
    server.setLevel(logging.INFO)
    try:
        yield
    finally:
        server.removeHandler(handler)
        server.setLevel(level)
        handler.close()


async def _store_with_due_keys(path: Path, count: int, now: int) -> tuple[Store, KeyService]:
    """count keys, each due once in the minute before now (a daily rotation)."""
    path.mkdir(parents=True, exist_ok=True)
    store = await SqliteStore.open(path / "kms.db")
    keys = KeyService(store, Sealer(os.urandom(32)), lambda: datetime.now(UTC), publish=lambda _e: None)
    names = [f"k{i:05d}" for i in range(count)]
    await _gather_in_batches(
        [store.create_key(n, now - DAY, keys.sealer_for(n, "aes-256"), []) for n in names], 200
    )
    await store._change(  # noqa: SLF001 - setup: what `key create --rotate-every 1d` writes
        lambda tx: tx.execute(
            "UPDATE keys SET rotate_every=?, rotation_due_at=? - (CAST(substr(name, 2) AS INTEGER) % 60) - 1",
            DAY,
            now,
        )
    )
    return store, keys


async def _measure(ctx: BenchContext, count: int) -> dict[str, float]:
    now = int(time.time())
    store, keys = await _store_with_due_keys(ctx.root / "key-schedule" / "scheduled", count, now)
    twin, twin_keys = await _store_with_due_keys(ctx.root / "key-schedule" / "manual", count, now)
    try:
        ctx.progress.step(f"scheduler: {count} keys due in one minute")
        scheduler = KeyScheduler(store, keys, lambda: datetime.now(UTC), lambda _e: None, poll=5.0)
        wall, cpu = time.perf_counter(), time.process_time()
        failed = await scheduler.run_once()
        sched_wall, sched_cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert failed == 0 and not (await store.schedule_due(int(time.time()), 1)).rotations
        assert await store.last_seq() == count  # one rotate event per key, none twice
        ctx.progress.step(f"baseline: {count} manual rotations")
        names = [f"k{i:05d}" for i in range(count)]
        wall, cpu = time.perf_counter(), time.process_time()
        await _gather_in_batches([twin_keys.rotate(n) for n in names])
        base_wall, base_cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert await twin.last_seq() == count
    finally:
        await store.close()
        await twin.close()
    return {"sched_wall": sched_wall, "sched_cpu": sched_cpu, "base_wall": base_wall, "base_cpu": base_cpu}


def run(ctx: BenchContext) -> list[Result]:
    count = _count(ctx)
    ctx.progress.step(f"making {count} keys on each of two stores")
    with _server_log(ctx.root / "key-schedule.log"):
        m = asyncio.run(_measure(ctx, count))
    figure, baseline = count / m["sched_wall"], count / m["base_wall"]
    on_time = m["sched_wall"] <= 60.0
    return [
        Result(
            scenario="key-schedule",
            variant=f"{count} keys due in one minute",
            metric="scheduled rotations",
            unit="keys/s",
            figure=figure,
            baseline_name="manual-rotate",
            baseline=baseline,
            target=f"ratio >= {MIN_RATIO:.2f}; all due keys rotated within the minute",
            passed=figure / baseline >= MIN_RATIO and on_time,
            details={
                "keys": count,
                "seconds_for_all": m["sched_wall"],
                "cpu_ms_per_due_key": m["sched_cpu"] * 1000 / count,
                "manual_cpu_ms_per_key": m["base_cpu"] * 1000 / count,
                "keys_per_minute": figure * 60,
            },
        )
    ]
