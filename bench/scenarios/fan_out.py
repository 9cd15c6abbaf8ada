"""fan-out: from a revocation being durable to the last of N watchers receiving it, and memory per stream.

For each N the baseline (a bare server pushing one small message to N open
streams) and Seed KMS (Revocation.Watch, a key version revoked through the
admin socket) are measured the same way, each on a fresh server process:

1. one stream from here first (TLS and gRPC set up), then the server's RSS;
2. N streams from several client processes, several connections each, until
   every one has proved it is subscribed; two warm-up rounds;
3. the RSS again: (after - before) / N is the memory per open stream;
4. rounds: trigger, and the round's latency is the last arrival over all
   watchers minus the instant the trigger call returned (for Seed KMS: the
   Revoke RPC returned, so the event was durable). p50/p99 over rounds.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.context import BenchContext
from bench.kms import KmsServer
from bench.pki import Identity
from bench.procs import BenchError
from bench.results import Result, percentile
from bench.watchers import WatchSpec, WatchSummary, watch_worker
from bench.workers import WorkerPool
from kms.v1 import revocation_pb2

__all__ = ["FanoutRun", "Rounds", "kms_watch_setup", "run", "watch_specs"]

WARMUP_ROUNDS = 2
STREAMS_PER_CONNECTION = 250
# The same size as a WatchResponse carrying a key revocation event.
PAYLOAD_BYTES = 48
REVOKED_KEY = "fanout-key"

# Returns (seq, monotonic time sent, monotonic time the trigger call returned).
Trigger = Callable[[], tuple[int, float, float]]


@dataclass
class FanoutRun:
    latencies: list[float] = field(default_factory=list)  # per round: last arrival - trigger returned
    first: list[float] = field(default_factory=list)  # per round: first arrival - trigger returned
    memory_per_stream: float = math.nan
    open_seconds: float = math.nan
    missed: int = 0  # round deliveries that never completed
    summaries: list[WatchSummary] = field(default_factory=list)


class Rounds:
    """Collects the watchers' reports: seq -> [(count, first, last)] per worker."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.arrivals: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
        self.errors: list[str] = []
        pool.on_report = self._on_report

    def _on_report(self, index: int, data: Any) -> None:
        if data[0] == "error":
            self.errors.append(str(data[1]))
            return
        seq, count, first, last = data
        self.arrivals[seq].append((count, first, last))

    def complete(self, seq: int) -> bool:
        return len(self.arrivals.get(seq, ())) == self.pool.size

    def wait(self, seq: int, timeout: float) -> bool:
        self.pool.pump(lambda: self.complete(seq) or bool(self.errors), timeout)
        if self.errors:
            raise BenchError(f"{self.pool.label}: a watch stream failed: {self.errors[0]}")
        return self.complete(seq)

    def last(self, seq: int) -> float:
        return max(last for _, _, last in self.arrivals[seq])

    def first(self, seq: int) -> float:
        return min(first for _, first, _ in self.arrivals[seq])


def watch_specs(
    kind: str, address: str, ca_pem: bytes, identities: list[Identity], streams: int, after_seq: int = 0
) -> list[WatchSpec]:
    """streams spread over one worker per identity, STREAMS_PER_CONNECTION per connection at most."""
    workers = len(identities)
    specs = []
    for i, identity in enumerate(identities):
        mine = streams // workers + (1 if i < streams % workers else 0)
        channels = max(2, math.ceil(mine / STREAMS_PER_CONNECTION))
        specs.append(WatchSpec(kind, address, ca_pem, identity, mine, channels, after_seq))
    return specs


def _round_timeout(n: int) -> float:
    return 10 + n / 500


def measure(
    ctx: BenchContext,
    label: str,
    pid: int,
    specs: list[WatchSpec],
    open_seq: int,
    trigger: Trigger,
    rounds: int,
    prime: Callable[[], None],
) -> FanoutRun:
    n = sum(s.streams for s in specs)
    run = FanoutRun()
    from bench.procs import rss_bytes

    prime()
    time.sleep(0.3)
    before = rss_bytes(pid)
    with WorkerPool(watch_worker, specs, label) as pool:
        tracker = Rounds(pool)
        ctx.progress.step(f"{label}: opening {n} streams")
        started = time.monotonic()
        pool.wait_ready()
        if not tracker.wait(open_seq, timeout=60 + n / 100):
            raise BenchError(f"{label}: not every stream opened")
        run.open_seconds = time.monotonic() - started
        for r in range(WARMUP_ROUNDS + rounds):
            ctx.progress.step(
                f"{label}: round {r + 1 - WARMUP_ROUNDS}/{rounds}"
                if r >= WARMUP_ROUNDS
                else f"{label}: warm-up"
            )
            seq, _, returned = trigger()
            if not tracker.wait(seq, timeout=_round_timeout(n)):
                run.missed += 1
                continue
            if r == WARMUP_ROUNDS - 1:
                time.sleep(0.3)
                run.memory_per_stream = (rss_bytes(pid) - before) / n
            if r >= WARMUP_ROUNDS:
                run.latencies.append(tracker.last(seq) - returned)
                run.first.append(tracker.first(seq) - returned)
            time.sleep(0.1)  # rounds do not overlap
        pool.send("stop")
        run.summaries = pool.results(timeout=60)
    return run


def _baseline_trigger(control_socket: str) -> tuple[Trigger, Callable[[], None]]:
    channel = grpc.secure_channel(
        f"unix:{control_socket}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
    )
    publish = channel.unary_unary("/bench.Control/Publish")
    seq = 0

    def trigger() -> tuple[int, float, float]:
        nonlocal seq
        seq += 1
        payload = seq.to_bytes(8, "big").ljust(PAYLOAD_BYTES, b".")
        sent = time.monotonic()
        publish(payload, timeout=60)
        return seq, sent, time.monotonic()

    return trigger, channel.close


def _prime(address: str, ca_pem: bytes, identity: Identity, method: str, request: bytes) -> None:
    """One stream, one message, closed: TLS and gRPC state exist before the RSS is read."""
    creds = grpc.ssl_channel_credentials(ca_pem, identity.key_pem, identity.cert_pem)
    with grpc.secure_channel(address, creds) as channel:
        call = channel.unary_stream(method)(request, timeout=30)
        next(call)
        call.cancel()


def kms_watch_setup(
    ctx: BenchContext, kms: KmsServer, workers: int, prefix: str
) -> tuple[list[Identity], int]:
    """One identity per watch worker, and one event in the log: watchers replay it to prove they are open."""
    identities = kms.enroll_identities(ctx.agent_keys[-workers:], prefix)
    kms.create_key(REVOKED_KEY)
    seq, _, _ = kms.revoke_key(REVOKED_KEY)
    return identities, seq


def _rounds(ctx: BenchContext, n: int) -> int:
    # Small N rounds are cheap (~0.1 s): take more of them, so p99 is less a single outlier.
    per_second = 2 if n <= 1000 else 1
    return max(3, min(30, round(ctx.duration * per_second)))


def _run_baseline(ctx: BenchContext, n: int, workers: int) -> FanoutRun:
    with ctx.baseline_server(f"fan-out-{n}-broadcast") as server:
        trigger, close = _baseline_trigger(server.fields["admin-socket"])
        try:
            identities = ctx.baseline_clients(workers)
            address, ca = server.fields["address"], ctx.baseline_pki.ca_pem
            specs = watch_specs("baseline", address, ca, identities, n)
            return measure(
                ctx,
                f"broadcast N={n}",
                server.pid,
                specs,
                0,
                trigger,
                _rounds(ctx, n),
                lambda: _prime(address, ca, identities[0], "/bench.Baseline/Subscribe", b""),
            )
        finally:
            close()


def _run_kms(ctx: BenchContext, n: int, workers: int) -> FanoutRun:
    with ctx.kms_server(f"fan-out-{n}") as kms:
        ctx.progress.step(f"seed-kms N={n}: enrolling {workers} watching identities")
        identities, seq = kms_watch_setup(ctx, kms, workers, "watch")
        specs = watch_specs("kms", kms.address, kms.ca_pem, identities, n, after_seq=seq - 1)
        request = revocation_pb2.WatchRequest(after_seq=seq - 1).SerializeToString()
        run = measure(
            ctx,
            f"seed-kms N={n}",
            kms.pid,
            specs,
            seq,
            lambda: kms.revoke_key(REVOKED_KEY),
            _rounds(ctx, n),
            lambda: _prime(kms.address, kms.ca_pem, identities[0], "/kms.v1.Revocation/Watch", request),
        )
        kms.process.check_alive()
        return run


def run(ctx: BenchContext) -> list[Result]:
    workers = ctx.scale.client_processes
    results = []
    for n in ctx.scale.fanout:
        base = _run_baseline(ctx, n, workers)
        kms = _run_kms(ctx, n, workers)
        p99, base_p99 = percentile(kms.latencies, 99), percentile(base.latencies, 99)
        mem_ratio = kms.memory_per_stream / base.memory_per_stream if base.memory_per_stream > 0 else math.nan
        result = Result(
            scenario="fan-out",
            variant=f"N={n}",
            metric="revoke -> last watcher p99",
            unit="ms",
            figure=p99 * 1000,
            baseline_name="broadcast",
            baseline=base_p99 * 1000,
            target="p99 ratio <= 1.3; memory/stream ratio <= 2",
            passed=False,
            higher_is_better=False,
            details={
                "p50_ms": percentile(kms.latencies, 50) * 1000,
                "broadcast_p50_ms": percentile(base.latencies, 50) * 1000,
                "first_watcher_p50_ms": percentile(kms.first, 50) * 1000,
                "rounds": len(kms.latencies),
                "mem_per_stream_kib": kms.memory_per_stream / 1024,
                "broadcast_mem_per_stream_kib": base.memory_per_stream / 1024,
                "mem_ratio": mem_ratio,
                "open_s": kms.open_seconds,
                "broadcast_open_s": base.open_seconds,
                "missed_rounds": kms.missed,
                "heartbeats": sum(s.heartbeats for s in kms.summaries),
            },
            samples={"seed-kms": kms.latencies, "broadcast": base.latencies},
        )
        # The reply to Revoke is the start of the clock. A last watcher that has the event
        # before the reply arrives (p50 <= 0) means the server answers only after the
        # fan-out, and the figure measures nothing: say so, and fail.
        measured = percentile(kms.latencies, 50) > 0
        if not measured:
            result.details["invalid"] = "Revoke replied after the last watcher had the event"
        result.passed = measured and result.ratio <= 1.3 and mem_ratio <= 2 and kms.missed == 0
        results.append(result)
    return results
