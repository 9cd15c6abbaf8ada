"""Smoke: the benchmark suite runs every scenario end to end and reports real figures.

Targets are not asserted: shared machines are noisy, and a benchmark that
misses its target is a finding for bench/RESULTS.md, not a broken build.
fan-out-replicas needs PostgreSQL's server binaries: where they are missing
it must be skipped (and said so), never fail the run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from bench.cli import main
from bench.context import BenchContext, Scale
from bench.scenarios import SCENARIOS
from bench.scenarios.fan_out import rounds_for
from bench.softhsm import softhsm_module
from tests.pg import find_bindir

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_every_scenario_reports_a_figure_beside_its_baseline(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--duration",
            "0.5",  # a smoke test: figures are not asserted, and even enrollment makes ~100 ops
            "--scale",
            "small",
            "--json",
            "--quiet",
            "--plot",
            str(tmp_path),
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    assert report["meta"]["errors"] == {}
    skipped = report["meta"]["skipped"]
    assert set(skipped) == (set() if find_bindir() else {"fan-out-replicas"}), skipped
    results = report["results"]
    assert {r["scenario"] for r in results} == set(SCENARIOS) - set(skipped)
    for r in results:
        for key in ("figure", "baseline", "ratio"):
            assert isinstance(r[key], float | int) and math.isfinite(r[key]) and r[key] > 0, (
                r["name"],
                key,
                r,
            )
        assert r["ratio"] == pytest.approx(r["figure"] / r["baseline"], rel=1e-2)
        assert isinstance(r["pass"], bool) and r["target"]
    names = {r["name"] for r in results}
    assert {"enroll[ecdsa-p256 CA]", "enroll[rsa-3072 CA]"} <= names
    if softhsm_module() is not None:  # the P-256 CA key in a SoftHSM2 token, beside the software one
        hsm = next(r for r in results if r["name"] == "enroll[ecdsa-p256 HSM CA]")
        assert hsm["details"]["vs_software_p256"] > 0, hsm
    for r in results:
        if r["scenario"] == "fan-out-replicas":
            # Watchers on A (where the revocation is made) and on B are timed apart.
            for key in ("same_replica_p99_ms", "other_replica_p99_ms"):
                assert isinstance(r["details"][key], float) and r["details"][key] > 0, (key, r)
            assert r["details"]["missed_rounds"] == 0, r
        figures = {
            "fan-out": ("server_cpu_us_per_message", "broadcast_server_cpu_us_per_message"),
            # Plain echo beside the target (the bare stack under the same fan-out), and where the cores went.
            "mixed": ("echo_calls_s", "echo_loaded_p50_ms", "watchers_cpu_cores", "server_cpu_cores"),
            # The scheduler's cost per due key (300 keys at this scale), beside a manual rotation's.
            "key-schedule": ("cpu_ms_per_due_key", "manual_cpu_ms_per_key", "seconds_for_all"),
        }
        for key in figures.get(r["scenario"], ()):
            assert isinstance(r["details"][key], float) and r["details"][key] > 0, (key, r)
        if r["scenario"] == "mixed":  # each server's CPU during the other's phases (may be 0)
            for key in ("kms_cores_in_echo_loaded", "echo_cores_in_seed_kms"):
                assert isinstance(r["details"][key], float) and r["details"][key] >= 0, (key, r)
    charts = sorted(p.name for p in tmp_path.glob("*.png"))
    assert {"fan-out-latency.png", "throughput.png"} <= set(charts), charts
    for chart in charts:
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fan_out_replicas_is_skipped_with_the_reason_without_postgresql(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bench.postgres

    monkeypatch.setattr(bench.postgres, "_bindir", lambda: None)
    assert main(["fan-out-replicas", "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["results"] == [] and report["meta"]["errors"] == {}
    assert "no PostgreSQL server binaries" in report["meta"]["skipped"]["fan-out-replicas"]
    assert "bench: skipped fan-out-replicas: no PostgreSQL server binaries" in err


def test_fan_out_takes_enough_rounds_for_its_p99() -> None:
    # Over 20 rounds the p99 is nearly the largest, one outlier of either side.
    def at(duration: float) -> BenchContext:
        return cast(BenchContext, SimpleNamespace(duration=duration))

    assert rounds_for(at(10), 1_000) == 100
    assert rounds_for(at(10), 10_000) == 10  # a round takes over a second there
    assert rounds_for(at(1), 100) == 10  # the smoke run


def test_mixed_phases_are_apart_for_the_fan_out_to_drain() -> None:
    # mixed's gap lets a server's fan-out backlog finish before the other side's phase starts.
    ctx = cast(BenchContext, SimpleNamespace(duration=4.0, scale=Scale.named("full")))
    phases, total = BenchContext.plan(ctx, ["echo", "seed-kms"], gap=3.0)
    assert [(round(a, 6), round(b, 6)) for _, a, b in phases[:3]] == [(0.0, 2.0), (5.0, 7.0), (10.0, 12.0)]
    assert total == pytest.approx(20.0)
