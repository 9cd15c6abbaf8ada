"""mixed: 1,000 watchers open while fetch-key runs at full speed and revocations arrive at 10/s.

The fetch-key load and its echo baseline alternate in phases as in
fetch-key; the watchers stay open throughout, and during every Seed KMS phase
a thread here revokes a key version every 100 ms through the admin socket.
Afterwards every revocation must have reached every watcher; its latency is
the last arrival minus the instant the Revoke call returned (durable).

The target is against ``echo-loaded``: the same echo while the bare
baseline server pushes a message every 100 ms to 1,000 subscribers of its
own (the same count, clients and processes as the watchers), i.e. what the
stack itself keeps under the same fan-out on this machine (issue 20 redefined
it so; it was plain echo before). Plain echo still runs in phases of its own
and is reported beside (``echo_calls_s``, ``ratio_vs_echo``), not judged.

Phases are SETTLE_SECONDS apart at 1,000 watchers (scaled with the count):
a server's fan-out outlives its phase. Under grpc.aio the completion events
of a burst of 1,000 stream writes pass to the event loop one per loop
iteration once its wake-up socket is full, so a backlog builds during the
phase and takes one to two seconds to drain after the last push. With the
0.4 s gap of the other scenarios that tail, and its watchers' reading, ran
on the same two cores in the next phase: in the rotation that is
echo-loaded after seed-kms four rounds in five, and echo-loaded fell to
3-22 calls/s (bench/RESULTS.md, "Issue 20 §3: mixed", also for what is left). ``kms_cores_in_echo_loaded`` and ``echo_cores_in_seed_kms``
(each server's CPU during the other's phases) show what is left of it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from bench.context import PHASE_GAP, BenchContext, LoadOutcome
from bench.load import LoadSpec
from bench.procs import BenchError
from bench.results import Result, percentile
from bench.scenarios.common import throughput_result
from bench.scenarios.fan_out import REVOKED_KEY, Rounds, baseline_trigger, kms_watch_setup, watch_specs
from bench.scenarios.fetch_key import fetch_setup, load_specs
from bench.watchers import watch_worker
from bench.workers import WorkerPool

__all__ = ["run"]

REVOCATIONS_PER_SECOND = 10
LOADED = "echo-loaded"
DELIVERY_P99_MS = 250.0
MIN_RATIO = 0.80  # FetchKey under the fan-out / echo under the same fan-out
# Seconds between phases per 1,000 watchers, for the last phase's fan-out to drain (docstring).
SETTLE_SECONDS = 3.0


class _Pacer:
    """Triggers at a steady rate during the phases of one target, from its own thread.

    trigger() returns (seq, monotonic time sent, monotonic time returned).
    """

    def __init__(self, phase: str, trigger: Callable[[], tuple[int, float, float]]) -> None:
        self._phase = phase
        self._trigger = trigger
        self.sent: dict[int, tuple[float, float]] = {}  # seq -> (sent, returned)
        self._thread: threading.Thread | None = None
        self.error = ""

    def start(self, phases: list[tuple[str, float, float]]) -> None:
        windows = [(start, end) for name, start, end in phases if name == self._phase]
        self._thread = threading.Thread(target=self._run, args=(windows,), daemon=True)
        self._thread.start()

    def _run(self, windows: list[tuple[float, float]]) -> None:
        step = 1.0 / REVOCATIONS_PER_SECOND
        try:
            for start, end in windows:
                at = start + step / 2
                while at < end:
                    time.sleep(max(0.0, at - time.monotonic()))
                    seq, sent, returned = self._trigger()
                    self.sent[seq] = (sent, returned)
                    at += step
        except Exception as exc:  # reported by join(): a failed Revoke fails the scenario
            self.error = f"{type(exc).__name__}: {exc}"

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(60)
        if self.error:
            raise BenchError(f"a {self._phase} trigger failed: {self.error}")


def _with_loaded_echo(spec: LoadSpec) -> LoadSpec:
    """The spec's targets plus its echo target again, under the name of the loaded phases."""
    (echo,) = (t for t in spec.targets if t.name == "echo")
    return replace(spec, targets=(*spec.targets, replace(echo, name=LOADED)))


def _cores(out: LoadOutcome, pid: int) -> float:
    """pid's CPU seconds per second of out's phases."""
    return out.cpu_seconds_by_pid[pid] / out.cpu_window_seconds if out.cpu_window_seconds else math.nan


def run(ctx: BenchContext) -> list[Result]:
    workers = ctx.scale.client_processes
    watchers = ctx.scale.mixed_watchers
    with ctx.baseline_server("mixed-echo") as echo, ctx.kms_server("mixed") as kms:
        identities = fetch_setup(ctx, kms)
        watch_ids, open_seq = kms_watch_setup(ctx, kms, workers, "mwatch")
        specs = watch_specs("kms", kms.address, kms.ca_pem, watch_ids, watchers, after_seq=open_seq - 1)
        base_specs = watch_specs(
            "baseline",
            echo.fields["address"],
            ctx.baseline_pki.ca_pem,
            ctx.baseline_clients(workers),
            watchers,
        )
        publish, close_publish = baseline_trigger(echo.fields["admin-socket"])
        with (
            WorkerPool(watch_worker, specs, "mixed watchers") as watch_pool,
            WorkerPool(watch_worker, base_specs, "mixed baseline subscribers") as base_pool,
        ):
            tracker, base_tracker = Rounds(watch_pool), Rounds(base_pool)
            ctx.progress.step(f"opening {watchers} watch streams and {watchers} baseline subscriptions")
            watch_pool.wait_ready()
            base_pool.wait_ready()
            if not tracker.wait(open_seq, timeout=60 + watchers / 100) or not base_tracker.wait(
                0, timeout=60 + watchers / 100
            ):
                raise BenchError("mixed: not every watch stream opened")
            revoker = _Pacer("seed-kms", lambda: kms.revoke_key(REVOKED_KEY))
            publisher = _Pacer(LOADED, publish)
            kms_pid, echo_pid, watcher_pids = kms.pid, echo.pid, watch_pool.pids
            try:
                out = ctx.run_load(
                    [
                        _with_loaded_echo(spec)
                        for spec in load_specs(ctx, echo.fields["address"], kms, identities)
                    ],
                    "mixed",
                    on_go=lambda phases: (revoker.start(phases), publisher.start(phases)),
                    server_pids={"echo": echo.pid, LOADED: echo.pid, "seed-kms": kms.pid},
                    # Where the two cores go: the watchers' processes stand for a fleet's machines.
                    other_pids=watcher_pids,
                    gap=max(PHASE_GAP, SETTLE_SECONDS * watchers / 1000),
                )
                revoker.join()
                publisher.join()
            finally:
                close_publish()
            ctx.progress.step(f"waiting for {len(revoker.sent)} revocations to reach every watcher")
            watch_pool.pump(
                lambda: all(tracker.complete(s) for s in revoker.sent) or bool(tracker.errors), 15
            )
            base_pool.pump(
                lambda: all(base_tracker.complete(s) for s in publisher.sent) or bool(base_tracker.errors), 15
            )
            base_delivered = sum(base_tracker.complete(s) for s in publisher.sent)
            for pool in (watch_pool, base_pool):
                pool.send("stop")
            summaries = watch_pool.results(timeout=60)
            base_pool.results(timeout=60)
        kms.process.check_alive()
    delivered = [s for s in revoker.sent if tracker.complete(s)]
    latencies = [tracker.last(s) - revoker.sent[s][1] for s in delivered]
    from_sent = [tracker.last(s) - revoker.sent[s][0] for s in delivered]
    p99 = percentile(latencies, 99) * 1000
    # The watchers and the server's fan-out work only while revocations flow (Seed KMS phases).
    kms_seconds = out["seed-kms"].cpu_window_seconds  # its phases, as measured
    cpu_used = out["seed-kms"].cpu_seconds_by_pid
    watchers_cpu = sum(cpu_used[pid] for pid in watcher_pids)
    kms_out, echo_out, loaded_out = out["seed-kms"], out["echo"], out[LOADED]
    all_delivered = bool(revoker.sent) and len(delivered) == len(revoker.sent) and not tracker.errors
    result = throughput_result(
        "mixed",
        f"{watchers} watchers",
        "FetchKey under load",
        "calls/s",
        kms_out,
        loaded_out,
        LOADED,
        MIN_RATIO,
        target=f"ratio >= {MIN_RATIO:.2f}; all revocations delivered, p99 < {DELIVERY_P99_MS:.0f} ms",
        details={
            "revocations": len(revoker.sent),
            "delivered_to_all": len(delivered),
            "delivery_p50_ms": percentile(latencies, 50) * 1000,
            "delivery_p99_ms": p99,
            "delivery_p99_from_call_ms": percentile(from_sent, 99) * 1000,
            "watch_errors": sum(s.errors for s in summaries),
            # CPU seconds per second of Seed KMS phase, out of the machine's cores.
            "watchers_cpu_cores": watchers_cpu / kms_seconds,
            "server_cpu_cores": cpu_used[kms_pid] / kms_seconds,
            "echo_loaded_pushes_delivered": f"{base_delivered}/{len(publisher.sent)}",
            # Each server's CPU (cores) during the other's phases: a fan-out left over from the
            # phase before, which the settle gap is there to keep out.
            "kms_cores_in_echo_loaded": _cores(loaded_out, kms_pid),
            "echo_cores_in_seed_kms": _cores(kms_out, echo_pid),
            "kms_watchers_cores_in_echo_loaded": sum(_cores(loaded_out, p) for p in watcher_pids),
            # Informative (see the module docstring): plain echo, no fan-out.
            "echo_calls_s": echo_out.rate,
            "ratio_vs_echo": kms_out.rate / echo_out.rate if echo_out.rate else math.nan,
            "echo_p50_ms": percentile(echo_out.latencies, 50) * 1000,
        },
        samples={"seed-kms": kms_out.latencies, LOADED: loaded_out.latencies, "delivery": latencies},
    )
    # throughput_result names the baseline's figures after it: echo_loaded_p50_ms, not echo-loaded_...
    result.details = {k.replace(f"{LOADED}_", "echo_loaded_"): v for k, v in result.details.items()}
    if tracker.errors:
        result.details["watch_error"] = tracker.errors[0]
    result.passed = (
        result.ratio >= MIN_RATIO and all_delivered and p99 < DELIVERY_P99_MS and not kms_out.errors
    )
    return [result]
