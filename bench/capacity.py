"""Capacity: what a server would serve with the cores it can use to itself, from its CPU per operation.

On the bench machine the load generator takes part of the cores, so a
server's throughput understates what it would do alone. Its CPU time per
operation does not move with that, so capacity = usable cores x 1000 / server
CPU ms per operation, where the usable cores are those the server can keep
busy: one for a single process (Seed KMS with one worker, the bare echo), the
worker count (up to the machine's cores) with ``--workers N``, and every core
for a Go server (GOMAXPROCS is the core count). The cores a server did use
(its CPU seconds per second of its phases) are reported beside: the same
formula with them gives back the throughput.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess

from bench.context import LoadOutcome
from bench.procs import exe

__all__ = ["capacity", "cores_used", "machine_cores", "usable_cores", "workers_args"]


def machine_cores() -> int:
    return len(os.sched_getaffinity(0))


def usable_cores(processes: int) -> int:
    return max(1, min(processes, machine_cores()))


def capacity(cores: float, cpu_ms_per_op: float) -> float:
    if not cpu_ms_per_op or math.isnan(cpu_ms_per_op):
        return math.nan
    return cores * 1000 / cpu_ms_per_op


def cores_used(out: LoadOutcome, pid: int) -> float:
    """The server's CPU seconds per second of its own target's phases."""
    if not out.cpu_window_seconds:
        return math.nan
    return out.cpu_seconds_by_pid.get(pid, math.nan) / out.cpu_window_seconds


@functools.cache
def _has_workers_flag() -> bool:
    proc = subprocess.run(
        [exe("kms-server"), "run", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return "--workers" in proc.stdout


def workers_args(workers: int) -> tuple[list[str], int]:
    """``kms-server run`` flags for ``workers`` worker processes, and the count the server will run.

    A server without ``--workers`` (before worker processes) runs one process:
    no flag, and 1.
    """
    if _has_workers_flag():
        return ["--workers", str(workers)], workers
    return [], 1
