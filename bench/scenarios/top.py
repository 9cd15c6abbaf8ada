"""top: one update of `kms-server top` with 10,000 agents enrolled, against a bare admin call.

N agents (10,000; 1,000 at --scale small) are written straight into a fresh data dir's
SQLite store (`kms-server init`, then one transaction: each agent and one certificate, with a
placeholder DER that nothing here reads), so seeding takes a second rather than the hours
10,000 RSA keys and enrollments would; then `kms-server run` starts on it.

Seed KMS: one update of a view of one screen (30 agents, 10 keys, 10 expiries, 10 events)
over the admin socket: the client sends a new window (another offset, and every other time a
filter, which costs a pass over every name) and times the Overview that answers it. Baseline:
`Admin/GetCA` on the same socket, a unary call that reads nothing: the floor of any admin
call. The figure is the update's median latency; the server's CPU per update and per GetCA
are in the details, beside `ListAgents` (every agent: what a view without windows would
fetch each tick) and the CPU of one idle tick (no window change, no event).
"""

from __future__ import annotations

import queue
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from bench.context import BenchContext
from bench.procs import exe, tree_cpu_seconds
from bench.results import Result
from kms.v1 import admin_pb2, monitor_pb2, monitor_pb2_grpc

__all__ = ["run"]

MAX_RATIO = 10.0
_SCREEN = {"agent_limit": 30, "key_limit": 10, "soon_limit": 10, "event_limit": 10}


def _count(ctx: BenchContext) -> int:
    return 1_000 if ctx.scale.name == "small" else 10_000


def _seed(data_dir: Path, count: int) -> None:
    """count agents, each with one certificate ending within the next 30 days."""
    done = subprocess.run(
        [exe("kms-server"), "init", "--data-dir", str(data_dir)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    now = int(time.time())
    with sqlite3.connect(data_dir / "kms.db") as db:
        db.executemany(
            "INSERT INTO agents (name, created_at, updated_at) VALUES (?, ?, ?)",
            [(f"agent-{i:05d}", now, now) for i in range(count)],
        )
        db.executemany(
            "INSERT INTO certificates (serial, agent_name, not_before, not_after, der, issued_at, groups_json)"
            " VALUES (?, ?, ?, ?, ?, ?, '[\"bench\"]')",
            [
                (f"{i + 1:x}", f"agent-{i:05d}", now, now + 3600 + i * 259, b"\x30\x00", now)
                for i in range(count)
            ],
        )


def _timed(pid: int, rounds: int, one: Callable[[int], object]) -> tuple[list[float], float]:
    """Latencies (s) of rounds calls of one(i), and the server's CPU seconds per call."""
    latencies, cpu = [], tree_cpu_seconds(pid)
    for i in range(rounds):
        start = time.perf_counter()
        one(i)
        latencies.append(time.perf_counter() - start)
    return latencies, (tree_cpu_seconds(pid) - cpu) / rounds


class _View:
    """An Observe stream held open: send a window, read the Overview that answers it."""

    def __init__(self, channel: grpc.Channel, interval_ms: int) -> None:
        self._requests: queue.Queue[monitor_pb2.ObserveRequest | None] = queue.Queue()
        self._interval = interval_ms
        self.stream: Any = monitor_pb2_grpc.MonitorStub(channel).Observe(self._each())

    def _each(self) -> Iterator[monitor_pb2.ObserveRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def update(self, i: int, count: int) -> monitor_pb2.Overview:
        offset = (i * 37) % max(count - 30, 1)
        window = monitor_pb2.ObserveRequest(
            filter=str(i % 10) if i % 2 else "", agent_offset=offset, interval_ms=self._interval, **_SCREEN
        )
        self._requests.put(window)
        overview: monitor_pb2.Overview = next(self.stream)
        return overview

    def close(self) -> None:
        self._requests.put(None)
        self.stream.cancel()


def _measure(ctx: BenchContext, count: int) -> dict[str, float]:
    rounds = 50 if ctx.scale.name == "small" else 300
    with ctx.kms_server("top") as kms:
        admin: Any = kms.admin
        channel = grpc.secure_channel(
            f"unix:{kms.process.fields['admin-socket']}",
            grpc.local_channel_credentials(grpc.LocalConnectionType.UDS),
        )
        view = _View(channel, 60_000)  # no tick during the rounds: each answer is the new window's
        try:
            first = view.update(0, count)  # the roster's first read of every agent, not timed
            assert first.agents_total == count and len(first.agents) == 30, first.agents_total
            for i in range(20):  # warm-up
                view.update(i, count)
                admin.GetCA(admin_pb2.GetCARequest())
            ctx.progress.step(f"{rounds} updates of one screen, {rounds} GetCA")
            updates, update_cpu = _timed(kms.pid, rounds, lambda i: view.update(i, count))
            calls, call_cpu = _timed(kms.pid, rounds, lambda i: admin.GetCA(admin_pb2.GetCARequest()))
            ctx.progress.step("ListAgents of every agent, and idle ticks")
            listed, list_cpu = _timed(kms.pid, 5, lambda i: admin.ListAgents(admin_pb2.ListAgentsRequest()))
        finally:
            view.close()
        tick_cpu = _idle_ticks(channel, kms.pid)
        channel.close()
    return {
        "update_p50": statistics.median(updates),
        "update_p99": sorted(updates)[int(len(updates) * 0.99) - 1],
        "update_cpu": update_cpu,
        "call_p50": statistics.median(calls),
        "call_cpu": call_cpu,
        "list_p50": statistics.median(listed),
        "list_cpu": list_cpu,
        "tick_cpu": tick_cpu,
    }


def _idle_ticks(channel: grpc.Channel, pid: int) -> float:
    """The server's CPU seconds per Overview of a view left alone (a tick every 200 ms)."""
    view = _View(channel, 200)
    try:
        view.update(0, 1)
        cpu, ticks = tree_cpu_seconds(pid), 10
        for _ in range(ticks):
            next(view.stream)
        return (tree_cpu_seconds(pid) - cpu) / ticks
    finally:
        view.close()


def run(ctx: BenchContext) -> list[Result]:
    count = _count(ctx)
    ctx.progress.step(f"seeding {count} agents")
    _seed(ctx.root / "top" / "data", count)
    m = _measure(ctx, count)
    ratio = m["update_p50"] / m["call_p50"]
    return [
        Result(
            scenario="top",
            variant=f"{count} agents",
            metric="one screen's update, p50",
            unit="ms",
            figure=m["update_p50"] * 1000,
            baseline_name="admin-GetCA",
            baseline=m["call_p50"] * 1000,
            target=f"ratio <= {MAX_RATIO:.0f}",
            passed=ratio <= MAX_RATIO,
            higher_is_better=False,
            details={
                "agents": count,
                "update_p99_ms": m["update_p99"] * 1000,
                "server_cpu_ms_per_update": m["update_cpu"] * 1000,
                "server_cpu_ms_per_getca": m["call_cpu"] * 1000,
                "list_agents_p50_ms": m["list_p50"] * 1000,
                "server_cpu_ms_per_list_agents": m["list_cpu"] * 1000,
                "server_cpu_ms_per_idle_tick": m["tick_cpu"] * 1000,
                "list_agents_over_update": m["list_p50"] / m["update_p50"],
            },
        )
    ]
