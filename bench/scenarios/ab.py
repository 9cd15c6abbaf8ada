"""ab: this checkout's FetchKey against another revision's, two kms-servers in one run.

For changes of a few percent, which separate runs of ``fetch-key`` cannot
resolve on a shared machine (the bare echo's own cost per call moved by a
fifth between runs: bench/RESULTS.md). The bare echo and two kms-servers, this
checkout's code ("after") and ``--before REV``'s ("before": its server, kms
and agent packages from ``git archive``, run through PYTHONPATH), take turns
in the phases of one run, with fetch-key's identities, channels and depth;
then again with the two servers' places in the rotation swapped, which
cancels the bias of position (two copies of one revision measured from 0.98
to 1.11 one way round). The figure is the server CPU per FetchKey after
over before: the geometric mean of the two runs. There is no target: it is
a comparison.
"""

from __future__ import annotations

import io
import math
import subprocess
import tarfile
from pathlib import Path

from bench.context import BenchContext, LoadOutcome, split
from bench.kms import KmsServer
from bench.load import LoadSpec
from bench.pki import Identity
from bench.procs import BenchError, BenchSkip
from bench.results import Result
from bench.scenarios.fetch_key import depth_for, echo_target, fetch_key_target, fetch_setup

__all__ = ["export", "geomean", "resolve", "run"]

CHECKOUT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "kms", "agent")

Side = tuple[str, KmsServer, list[Identity]]  # a target's name, its server, its identities


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, check=False)


def resolve(rev: str) -> str:
    """REV's commit hash (asked before a run sets up, so that a typo costs nothing).

    Raises:
        BenchSkip: this is not a git checkout, or git is missing.
        BenchError: git does not know REV.
    """
    try:
        checkout = _git("rev-parse", "--git-dir").returncode == 0
    except FileNotFoundError:  # no git on this machine
        checkout = False
    if not checkout:
        raise BenchSkip("ab compares git revisions: run it from a git checkout, with git installed")
    commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit.returncode != 0:
        raise BenchError(f"--before {rev!r} is not a revision of this checkout: give a commit, branch or tag")
    return commit.stdout.decode().strip()


def export(rev: str, into: Path) -> str:
    """REV's packages under into (for PYTHONPATH); REV's commit hash. Raises as resolve."""
    commit = resolve(rev)
    archive = _git("archive", "--format=tar", commit, *PACKAGES)
    if archive.returncode != 0:
        raise BenchError(f"git archive {rev}: {archive.stderr.decode(errors='replace').strip()}")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _specs(ctx: BenchContext, echo_address: str, first: Side, second: Side) -> list[LoadSpec]:
    """The echo, then the two servers in this order, each over its own identities' channels."""
    (name1, kms1, ids1), (name2, kms2, ids2) = first, second
    depth = depth_for(len(ids1))
    workers = ctx.scale.client_processes
    baseline_ids = ctx.baseline_clients(len(ids1))
    return [
        LoadSpec(
            (
                echo_target(ctx, echo_address, b, depth),
                fetch_key_target(kms1, one, depth, name1),
                fetch_key_target(kms2, two, depth, name2),
            )
        )
        for b, one, two in zip(
            split(baseline_ids, workers), split(ids1, workers), split(ids2, workers), strict=True
        )
    ]


def run(ctx: BenchContext) -> list[Result]:
    rev = ctx.before
    commit = export(rev, ctx.root / "before-code")
    runs: list[dict[str, LoadOutcome]] = []
    with (
        ctx.baseline_server("ab-echo") as echo,
        ctx.kms_server("ab-after") as after,
        ctx.kms_server("ab-before", code=ctx.root / "before-code") as before,
    ):
        sides: list[Side] = [
            ("after", after, fetch_setup(ctx, after)),
            ("before", before, fetch_setup(ctx, before)),
        ]
        pids = {"echo": echo.pid, "after": after.pid, "before": before.pid}
        for i, order in enumerate((sides, sides[::-1])):
            runs.append(
                ctx.run_load(_specs(ctx, echo.fields["address"], *order), f"ab-{i + 1}", server_pids=pids)
            )
        after.process.check_alive()
        before.process.check_alive()
    return [_result(runs, rev, commit)]


def _result(runs: list[dict[str, LoadOutcome]], rev: str, commit: str) -> Result:
    def ms(name: str) -> list[float]:
        return [out[name].server_cpu_ms_per_op for out in runs]

    after, before, echo = geomean(ms("after")), geomean(ms("before")), geomean(ms("echo"))
    errors = sum(out[name].errors for out in runs for name in ("after", "before"))
    return Result(
        scenario="ab",
        variant="fetch-key",
        metric="server CPU per FetchKey, this checkout",
        unit="ms",
        figure=after,
        baseline_name=f"before ({rev})",
        baseline=before,
        target="none: a comparison (ratio = after / before)",
        passed=errors == 0,
        higher_is_better=False,
        details={
            "before_commit": commit,
            "ratio_per_run": [round(a / b, 3) for a, b in zip(ms("after"), ms("before"), strict=True)],
            "after_vs_echo": round(after / echo, 3),
            "before_vs_echo": round(before / echo, 3),
            "echo_server_cpu_ms_per_op": round(echo, 4),
            "errors": errors,
        },
    )
