"""What every scenario shares in one run: scale, timing plan, key material, server launchers, load runs."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bench.kms import KmsServer
from bench.load import LoadSpec, PhaseResult, load_worker
from bench.pki import AgentKey, BaselinePki, Identity
from bench.postgres import BackgroundPostgres
from bench.procs import BenchError, ServerProcess, cpu_seconds, tree_cpu_seconds
from bench.progress import Progress
from bench.results import median
from bench.workers import WorkerPool

if TYPE_CHECKING:
    from bench.scenarios.fan_out import FanoutRun
    from tests.pg import PostgresCluster

__all__ = ["PHASE_GAP", "BenchContext", "LoadOutcome", "Scale", "split"]

# Pause between phases: the calls in flight at a phase's end finish here, not in the next phase.
PHASE_GAP = 0.4


T = TypeVar("T")


def split(items: Sequence[T], parts: int) -> list[tuple[T, ...]]:
    """items dealt round-robin into parts (none empty while items last)."""
    return [tuple(items[i::parts]) for i in range(parts)]


def _after(instant: float) -> Callable[[], bool]:
    return lambda: time.monotonic() >= instant


@dataclass(frozen=True)
class Scale:
    name: str
    identities: int  # enrolled identities driving fetch-key (the issue asks for 50+)
    fanout: tuple[int, ...]  # watcher counts for fan-out
    mixed_watchers: int
    client_processes: int
    max_rounds: int  # phases per target (or fan-out rounds) at most

    @staticmethod
    def named(name: str) -> Scale:
        if name == "small":
            return Scale("small", 8, (100,), 100, 2, 2)
        return Scale("full", 52, (1_000, 10_000), 1_000, 2, 5)


@dataclass
class LoadOutcome:
    """One target of a load run: a rate per phase, and every latency."""

    rates: list[float]
    latencies: list[float]
    errors: int = 0
    exhausted: bool = False
    first_error: str = ""
    # Server CPU time per counted operation during its phases (its process, all threads).
    server_cpu_ms_per_op: float = math.nan
    # The client processes' CPU time per counted operation during the target's phases.
    client_cpu_ms_per_op: float = math.nan
    # CPU seconds of each watched process (run_load's servers and other_pids) during them,
    # and the wall-clock seconds those phases took.
    cpu_seconds_by_pid: dict[int, float] = field(default_factory=dict)
    cpu_window_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return median(self.rates)


@dataclass
class BenchContext:
    duration: float
    scale: Scale
    root: Path
    progress: Progress
    agent_keys: list[AgentKey]
    baseline_pki: BaselinePki
    kms_args: list[str] = field(default_factory=list)
    # Started by the command line when a chosen scenario needs PostgreSQL.
    postgres: BackgroundPostgres | None = None
    # fan-out's broadcast baseline per N, measured once per run and shared with
    # fan-out-replicas, so both ratios have the same denominator.
    broadcast: dict[int, FanoutRun] = field(default_factory=dict)
    # The revision the ab scenario compares this checkout with (--before).
    before: str = "HEAD"

    # --- servers ----------------------------------------------------------------------

    def _baseline_dir(self) -> Path:
        directory = self.root / "baseline-pki"
        if not directory.exists():
            directory.mkdir(mode=0o700)
            files = {
                "ca.crt": self.baseline_pki.ca_pem,
                "server.crt": self.baseline_pki.server.cert_pem,
                "server.key": self.baseline_pki.server.key_pem,
            }
            for name, data in files.items():
                fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        return directory

    @contextlib.contextmanager
    def baseline_server(self, label: str) -> Iterator[ServerProcess]:
        """A fresh bare grpc.aio server process (fresh, so its memory is its own)."""
        work = self.root / label
        work.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "bench.baseline_server",
            "--dir",
            str(self._baseline_dir()),
            "--admin-socket",
            str(work / "control.sock"),
        ]
        with ServerProcess(
            cmd, "bench-baseline ready ", f"baseline server ({label})", work / "server.log"
        ) as server:
            yield server

    def postgres_cluster(self) -> PostgresCluster:
        """The run's private PostgreSQL cluster, once it has started. Raises BenchError."""
        if self.postgres is None:
            raise BenchError("no PostgreSQL cluster was started for this run")
        return self.postgres.cluster()

    def kms_server(self, label: str, *extra: str, code: Path | None = None) -> KmsServer:
        return KmsServer(self.root / label, f"kms-server ({label})", [*extra, *self.kms_args], code)

    def baseline_clients(self, count: int) -> list[Identity]:
        if count > len(self.baseline_pki.clients):
            raise BenchError(f"the key pool has {len(self.baseline_pki.clients)} keys, {count} are needed")
        return self.baseline_pki.clients[:count]

    # --- load runs --------------------------------------------------------------------

    def plan(
        self, targets: Sequence[str], gap: float = PHASE_GAP
    ) -> tuple[list[tuple[str, float, float]], float]:
        """Phases [(target, start, end)] relative to go: each target gets --duration seconds in
        rounds, and the order rotates each round so neither side always runs first; gap
        seconds, in no figure, between one phase and the next."""
        rounds = max(1, min(self.scale.max_rounds, math.floor(self.duration / 2)))
        length = self.duration / rounds
        phases, t = [], 0.0
        for r in range(rounds):
            order = list(targets[r % len(targets) :]) + list(targets[: r % len(targets)])
            for name in order:
                phases.append((name, t, t + length))
                t += length + gap
        return phases, t

    def run_load(
        self,
        specs: Sequence[LoadSpec],
        label: str,
        on_go: Callable[[list[tuple[str, float, float]]], None] | None = None,
        server_pids: dict[str, int] | None = None,
        other_pids: Sequence[int] = (),
        gap: float = PHASE_GAP,
    ) -> dict[str, LoadOutcome]:
        """Runs load_worker in one process per spec through the same plan; results per target.

        on_go, if given, is called with the phases in absolute monotonic time
        just before they start (to run something beside chosen phases).
        server_pids names each target's server process, to report its CPU time
        per operation: the efficiency figure that noise moves least. A server's
        CPU counts only during its own target's phases (not the gaps between),
        so what it does while another target runs is left out. The CPU of
        other_pids (and of the servers) during each target's phases is in its
        outcome's cpu_seconds_by_pid, over cpu_window_seconds. A server's CPU
        is that of its whole process tree (a supervisor and its workers).
        gap: seconds between phases (plan), for work a phase leaves behind to finish.
        """
        pids = server_pids or {}
        names = [t.name for t in specs[0].targets]
        phases, total = self.plan(names, gap)
        with WorkerPool(load_worker, specs, label) as pool:
            self.progress.step(f"{label}: connecting and warming up {len(specs)} client processes")
            pool.wait_ready()
            watched = sorted({*pids.values(), *other_pids})
            servers = set(pids.values())

            def cpu(pid: int) -> float:
                return tree_cpu_seconds(pid) if pid in servers else cpu_seconds(pid)

            cpu_by_target = {name: dict.fromkeys(watched, 0.0) for name in names}
            window = dict.fromkeys(names, 0.0)
            go = time.monotonic() + 0.3
            absolute = [(name, go + start, go + end) for name, start, end in phases]
            pool.send(absolute)
            if on_go is not None:
                on_go(absolute)
            for i, (name, start, end) in enumerate(phases):
                self.progress.step(f"{label}: {name} phase {i + 1}/{len(phases)}")
                # Reports are handled meanwhile; a condition that never holds makes pump
                # return at its timeout, i.e. at the phase's start, to the poll's precision.
                pool.pump(lambda: False, timeout=max(0.0, go + start - time.monotonic()))
                began, mark = time.monotonic(), {pid: cpu(pid) for pid in watched}
                pool.pump(_after(go + end), timeout=end - start + 5 + gap * 2)
                now = {pid: cpu(pid) for pid in watched}
                for pid in watched:
                    cpu_by_target[name][pid] += now[pid] - mark[pid]
                window[name] += time.monotonic() - began
            per_worker: list[list[PhaseResult]] = pool.results(timeout=60)
        outcomes = {name: LoadOutcome([], []) for name in names}
        for i, (name, _, _) in enumerate(phases):
            results = [worker[i] for worker in per_worker]
            out = outcomes[name]
            out.rates.append(sum(r.count for r in results) / results[0].seconds)
            for r in results:
                out.latencies += r.latencies
                out.errors += r.errors
                out.exhausted |= r.exhausted
                out.first_error = out.first_error or r.first_error
        for name, out in outcomes.items():
            mine = [worker[i] for worker in per_worker for i, phase in enumerate(phases) if phase[0] == name]
            ops = sum(r.count for r in mine)
            out.cpu_seconds_by_pid = cpu_by_target[name]
            out.cpu_window_seconds = window[name]
            if name in pids and ops:
                out.server_cpu_ms_per_op = out.cpu_seconds_by_pid[pids[name]] * 1000 / ops
            out.client_cpu_ms_per_op = sum(r.cpu_seconds for r in mine) * 1000 / ops if ops else math.nan
        return outcomes
