"""The bench's pure parts, without servers: the peers' load-tool output, process-tree CPU, capacity.

The scenarios that run them (scaling, openbao) are named runs, not in the smoke run:
each starts several servers or OpenBao for half a minute or more.
"""

from __future__ import annotations

import json
import math
import subprocess
import time

import pytest

import bench.peers.openbao
from bench.cli import main
from bench.context import LoadOutcome
from bench.peers.httpload import parse_ab, parse_wrk
from bench.procs import cpu_seconds, rss_bytes, tree, tree_cpu_seconds, tree_rss_bytes
from bench.scenarios import scaling

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
