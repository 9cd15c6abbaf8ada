"""scaling (named runs only): FetchKey and enrollment from ``kms-server run --workers 1`` and ``--workers 2``.

Both servers and a bare echo server run at once; their targets alternate in
phases (fetch-key's channels and depth; enrollment as in enroll, a new
connection per call, against the bare connect). The load generator shares
the machine's cores, so beside throughput each setting reports its server
CPU per operation (the supervisor and all its workers, from /proc), the cores
it used, and its capacity (bench/capacity.py), and so does the bare stack.
The target: capacity with 2 workers >= 1.6x with 1.

A kms-server without ``--workers`` runs one process for both settings: the
results say so (``workers_flag``) and fail, and the rest is measured all the same.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor

from bench.capacity import capacity, cores_used, usable_cores, workers_args
from bench.context import BenchContext, LoadOutcome, split
from bench.kms import KmsServer
from bench.load import LoadSpec
from bench.results import Result
from bench.scenarios.common import load_details
from bench.scenarios.enroll import LANES, WARMUP_TOKENS, connect_target, enroll_requests, enroll_target
from bench.scenarios.fetch_key import depth_for, echo_target, fetch_key_target, fetch_setup

__all__ = ["run"]

SETTINGS = (1, 2)
TARGET = 1.6
ENROLL_CEILING = 500  # enrollments/s per worker at most, to size the tokens made in advance


def _name(workers: int) -> str:
    return f"workers {workers}"


def _fetch_specs(ctx: BenchContext, echo_address: str, servers: dict[int, KmsServer]) -> list[LoadSpec]:
    ids = {n: fetch_setup(ctx, kms) for n, kms in servers.items()}
    count = ctx.scale.identities
    depth = depth_for(count)
    clients = ctx.scale.client_processes
    per_client = zip(
        split(ctx.baseline_clients(count), clients), *(split(ids[n], clients) for n in SETTINGS), strict=True
    )
    return [
        LoadSpec(
            (
                echo_target(ctx, echo_address, base, depth),
                *(
                    fetch_key_target(servers[n], mine, depth, _name(n))
                    for n, mine in zip(SETTINGS, own, strict=True)
                ),
            )
        )
        for base, *own in per_client
    ]


def _enroll_specs(ctx: BenchContext, connect_address: str, servers: dict[int, KmsServer]) -> list[LoadSpec]:
    clients = ctx.scale.client_processes

    def tokens(n: int) -> list[tuple[bytes, ...]]:
        count = math.ceil(ENROLL_CEILING * n * ctx.duration * 1.2) + clients * WARMUP_TOKENS
        return enroll_requests(ctx, servers[n], count, clients, _name(n))

    with ThreadPoolExecutor(len(servers)) as pool:  # each server makes its own, at once
        requests = dict(zip(servers, pool.map(tokens, servers), strict=True))
    base_ids = split(ctx.baseline_clients(LANES * clients), clients)
    specs = []
    for c in range(clients):
        targets = [connect_target(ctx, connect_address, base_ids[c])]
        targets += [enroll_target(_name(n), kms, requests[n][c]) for n, kms in servers.items()]
        specs.append(LoadSpec(tuple(targets)))
    return specs


def _setting(out: LoadOutcome, pid: int, cores: int) -> dict[str, float]:
    return {
        "calls_s": out.rate,
        "server_cpu_ms_per_op": out.server_cpu_ms_per_op,
        "cores_used": cores_used(out, pid),
        "cores": cores,
        "capacity": capacity(cores, out.server_cpu_ms_per_op),
    }


def _result(
    metric: str,
    out: dict[str, LoadOutcome],
    base: str,
    pids: dict[str, int],
    cores: dict[int, int],
    flag: bool,
) -> Result:
    figures = {n: _setting(out[_name(n)], pids[_name(n)], cores[n]) for n in SETTINGS}
    bare = _setting(out[base], pids[base], 1)
    details: dict[str, object] = {
        **{f"w{n}_{k}": v for n in SETTINGS for k, v in figures[n].items()},
        **{f"{base}_{k}": v for k, v in bare.items() if k != "cores"},
        "workers_flag": "yes" if flag else "missing: both settings ran one process",
    }
    for n in SETTINGS:
        details |= {
            f"w{n}_{k}": v
            for k, v in load_details("", out[_name(n)]).items()
            if "errors" in k or "error" in k
        }
    result = Result(
        scenario="scaling",
        variant=metric,
        metric=f"{metric} capacity",
        unit="ops/s",
        figure=figures[2]["capacity"],
        baseline_name=_name(1),
        baseline=figures[1]["capacity"],
        target=f"ratio >= {TARGET:.2f}",
        passed=False,
        details=details,
        samples={_name(n): out[_name(n)].latencies for n in SETTINGS},
    )
    clean = all(not out[_name(n)].errors and not out[_name(n)].exhausted for n in SETTINGS)
    result.passed = flag and clean and result.ratio >= TARGET
    return result


def run(ctx: BenchContext) -> list[Result]:
    flags = {n: workers_args(n) for n in SETTINGS}
    has_flag = all(flags[n][1] == n for n in SETTINGS)
    cores = {n: usable_cores(flags[n][1]) for n in SETTINGS}
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(ctx.baseline_server("scaling-echo"))
        servers = {n: stack.enter_context(ctx.kms_server(f"scaling-w{n}", *flags[n][0])) for n in SETTINGS}
        pids = {"echo": echo.pid, "connect": echo.pid, **{_name(n): kms.pid for n, kms in servers.items()}}
        fetch = ctx.run_load(
            _fetch_specs(ctx, echo.fields["address"], servers), "scaling-fetch", server_pids=pids
        )
        enroll = ctx.run_load(
            _enroll_specs(ctx, echo.fields["address"], servers), "scaling-enroll", server_pids=pids
        )
        for kms in servers.values():
            kms.process.check_alive()
    return [
        _result("FetchKey", fetch, "echo", pids, cores, has_flag),
        _result("enrollment", enroll, "connect", pids, cores, has_flag),
    ]
