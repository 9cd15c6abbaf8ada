"""The bench's pure parts, without servers: the peers' load-tool output, process-tree CPU, capacity.

The scenarios that run them (scaling, openbao, ab) are named runs, not in the smoke run:
each starts several servers or OpenBao for half a minute or more.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.peers.openbao
from bench.cli import main
from bench.context import LoadOutcome
from bench.peers.httpload import parse_ab, parse_wrk
from bench.procs import BenchError, BenchSkip, cpu_seconds, rss_bytes, tree, tree_cpu_seconds, tree_rss_bytes
from bench.scenarios import ab, scaling

WRK = """Running 2s test @ https://127.0.0.1:50149/v1/pki/sign/bench
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   101.36ms   64.82ms 360.75ms   84.34%
  3880 requests in 2.03s, 1.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   1911.33
"""

AB = """Time taken for tests:   1.002 seconds
Complete requests:      270
Failed requests:        203
   (Connect: 0, Receive: 2, Length: 201, Exceptions: 0)
Non-2xx responses:      3
"""


def test_wrk_and_ab_outputs_count_answers_that_succeeded() -> None:
    wrk = parse_wrk(WRK)
    assert (wrk.tool, wrk.seconds, wrk.ok, wrk.failed) == ("wrk", 2.03, 3870, 10)
    ab = parse_ab(AB)
    # A length that differs from the first answer's (ab's "Length" failure) is not an error.
    assert (ab.seconds, ab.ok, ab.failed) == (1.002, 265, 5)


def test_tree_cpu_counts_every_descendant_alive_or_reaped() -> None:
    busy = "import time\nend = time.process_time() + 0.15\nwhile time.process_time() < end: pass\n"
    # A supervisor that idles while one child burns CPU and exits (reaped) and another burns and stays.
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {busy!r}])\n"
        f"p = subprocess.Popen([sys.executable, '-c', {busy!r} + 'time.sleep(30)'])\n"
        "print('ok', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(["python3", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ok\n"
        time.sleep(0.4)  # the second child's busy loop
        assert tree_cpu_seconds(proc.pid) - cpu_seconds(proc.pid) >= 0.25
        assert len(tree(proc.pid)) == 2 and tree_rss_bytes(proc.pid) > rss_bytes(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _outcome(rate: float, cpu_ms: float, pid: int, cores_used: float) -> LoadOutcome:
    out = LoadOutcome([rate], [0.001])
    out.server_cpu_ms_per_op = cpu_ms
    out.cpu_seconds_by_pid = {pid: cores_used * 10}
    out.cpu_window_seconds = 10
    return out


def test_scaling_compares_capacities_and_fails_without_the_workers_flag() -> None:
    out = {"echo": _outcome(2000, 0.35, 1, 0.7), "workers 1": _outcome(1500, 0.6, 2, 0.9)}
    out["workers 2"] = _outcome(1700, 0.7, 3, 1.2)
    pids = {"echo": 1, "workers 1": 2, "workers 2": 3}
    result = scaling._result("FetchKey", out, "echo", pids, {1: 1, 2: 2}, True)
    # capacity = usable cores x 1000 / server CPU ms per op: 2000/0.7 against 1000/0.6
    assert result.figure == pytest.approx(2000 / 0.7) and result.baseline == pytest.approx(1000 / 0.6)
    assert result.ratio == pytest.approx(1.714, abs=1e-3) and result.passed
    assert result.details["w2_cores_used"] == pytest.approx(1.2)
    assert result.details["echo_capacity"] == pytest.approx(1000 / 0.35)
    assert not scaling._result("FetchKey", out, "echo", pids, {1: 1, 2: 2}, False).passed
    out["workers 2"].server_cpu_ms_per_op = math.nan
    assert math.isnan(scaling._result("FetchKey", out, "echo", pids, {1: 1, 2: 2}, True).ratio)


@pytest.mark.parametrize("missing", ["bao", "load tool"])
def test_openbao_is_skipped_with_the_reason_before_any_setup(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if missing == "bao":
        monkeypatch.setattr(bench.peers.openbao, "bao_binary", lambda: None)
    else:
        monkeypatch.setattr(bench.peers.openbao, "bao_binary", lambda: "/bin/true")
        monkeypatch.setattr(bench.peers.openbao, "load_tool", lambda: None)
    started = time.monotonic()
    assert main(["openbao", "--json", "--quiet"]) == 0
    assert time.monotonic() - started < 5  # no keys made, no server started
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["results"] == [] and report["meta"]["errors"] == {}
    reason = report["meta"]["skipped"]["openbao"]
    assert ("no bao binary" if missing == "bao" else "neither wrk nor ab") in reason
    assert f"bench: skipped openbao: {reason}" in err


def test_ab_exports_a_revision_whose_code_runs_ahead_of_this_checkout(tmp_path: Path) -> None:
    code = tmp_path / "before"
    commit = ab.export("HEAD", code)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ab.CHECKOUT, capture_output=True, text=True)
    assert commit == head.stdout.strip()
    shown = subprocess.run(["git", "show", "HEAD:server/__init__.py"], cwd=ab.CHECKOUT, capture_output=True)
    assert (code / "server" / "__init__.py").read_bytes() == shown.stdout
    # A kms-server started with the exported packages on PYTHONPATH imports them, not the checkout's.
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import server, kms, agent; print(server.__file__, kms.__file__, agent.__file__)",
        ],
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.split() == [str(code / p / "__init__.py") for p in ("server", "kms", "agent")]


def test_ab_refuses_a_revision_git_does_not_know(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="is not a revision of this checkout"):
        ab.export("no-such-revision", tmp_path / "before")
    assert not (tmp_path / "before").exists()


def test_ab_is_skipped_outside_a_git_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ab, "CHECKOUT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with pytest.raises(BenchSkip, match="from a git checkout"):
        ab.export("HEAD", tmp_path / "before")


def test_ab_reports_after_over_before_as_the_geometric_mean_of_both_runs() -> None:
    def run(echo: float, after: float, before: float, errors: int = 0) -> dict[str, LoadOutcome]:
        out = {"echo": _outcome(3000, echo, 1, 0.8), "after": _outcome(2000, after, 2, 0.8)}
        out["before"] = _outcome(2000, before, 3, 0.8)
        out["after"].errors = errors
        return out

    # One way round the after server looks 10 % dearer, the other way 10 % cheaper: no change.
    result = ab._result([run(0.25, 0.44, 0.40), run(0.25, 0.36, 0.40)], "main", "abc")
    assert result.ratio == pytest.approx(math.sqrt(1.1 * 0.9)) and result.passed
    assert result.details["ratio_per_run"] == [1.1, 0.9]
    assert result.details["before_vs_echo"] == pytest.approx(1.6) and result.baseline_name == "before (main)"
    assert not ab._result([run(0.25, 0.44, 0.40, errors=1), run(0.25, 0.36, 0.40)], "main", "abc").passed


def test_ab_with_an_unknown_revision_is_bad_usage_before_any_setup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert main(["ab", "--before", "no-such-revision", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("bench: error: --before 'no-such-revision' is not a revision") and err.count("\n") == 1
    )
    assert time.monotonic() - started < 5  # no agent keys were made first
