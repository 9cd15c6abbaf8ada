"""``python -m bench``: run every scenario, or some by name, and print a table or JSON.

Exit status: 0 when every scenario ran (whether or not it met its target:
that is a finding, not a failure) or was skipped because this machine lacks
what it needs (said on stderr and in the JSON's meta.skipped), 1 when one
could not run, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.postgres import BackgroundPostgres
from bench.postgres import unavailable as postgres_unavailable
from bench.procs import BenchError, BenchSkip
from bench.progress import Progress
from bench.results import Result, render_json, render_table
from bench.scenarios import ALL_SCENARIOS, ON_REQUEST, SCENARIOS, needs_postgresql, scenario, unavailable

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Seed KMS benchmarks, each beside its bare grpc.aio baseline measured in the same run.",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"one or more of: {', '.join(SCENARIOS)} (default: these), "
        f"or, only when named: {', '.join(ON_REQUEST)}",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="measured seconds per side (Seed KMS and baseline) in each scenario (default 10)",
    )
    parser.add_argument(
        "--scale",
        choices=["full", "small"],
        default="full",
        help="small: few identities and watchers, a smoke run",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG charts to DIR (needs matplotlib)")
    parser.add_argument(
        "--kms-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `kms-server run` argument for every Seed KMS server, repeatable (e.g. --kms-arg=--heartbeat=30s)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp directory (server logs, data dirs)"
    )
    parser.add_argument(
        "--before",
        default="HEAD",
        metavar="REV",
        help="the git revision the ab scenario compares this checkout's code with (default HEAD)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    return parser


def _error(message: str) -> int:
    print(f"bench: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unknown = [s for s in args.scenarios if s not in ALL_SCENARIOS]
    if unknown:
        print(
            f"bench: error: unknown scenario {unknown[0]!r}: choose from {', '.join(ALL_SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    if args.duration <= 0:
        print("bench: error: --duration must be positive", file=sys.stderr)
        return 2
    if "ab" in args.scenarios:  # a revision git does not know is bad usage, found before any setup
        from bench.scenarios.ab import resolve

        try:
            resolve(args.before)
        except BenchError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
        except BenchSkip:
            pass  # said with the other skips below
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _error("--plot needs matplotlib: pip install -e '.[bench]' (or pip install matplotlib)")
    names = args.scenarios or list(SCENARIOS)
    with_postgres = [name for name in names if needs_postgresql(name)]
    no_postgres = postgres_unavailable() if with_postgres else None
    skipped = dict.fromkeys(with_postgres, no_postgres) if no_postgres else {}
    skipped |= {name: reason for name in names if (reason := unavailable(name))}
    runnable = [name for name in names if name not in skipped]

    from bench.context import BenchContext, Scale
    from bench.pki import make_agent_keys, make_baseline_pki

    started = time.monotonic()
    progress = Progress(quiet=args.quiet)
    scale = Scale.named(args.scale)
    # Short and under /tmp: UNIX socket paths (the admin sockets) are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="kmsbench-", dir="/tmp"))
    results: list[Result] = []
    errors: dict[str, str] = {}
    postgres = None
    try:
        if any(needs_postgresql(name) for name in runnable):
            # Starts while the keys are made below: nothing is measured yet.
            postgres = BackgroundPostgres(root / "postgres.log").start()
        if runnable:
            progress.start("setup")
            pool = scale.identities + 12
            progress.step(f"making {pool} RSA-2048 agent keys and the baselines' PKI")
            keys = make_agent_keys(pool, processes=os.cpu_count() or 2)
            ctx = BenchContext(
                args.duration,
                scale,
                root,
                progress,
                keys,
                make_baseline_pki(keys),
                list(args.kms_arg),
                postgres,
                before=args.before,
            )
            progress.done(f"{pool} agent keys ready")
        for name in runnable:
            progress.start(name)
            try:
                got = scenario(name)(ctx)
            except BenchSkip as exc:
                skipped[name] = str(exc)
                progress.done(f"skipped: {exc}")
                continue
            except BenchError as exc:
                errors[name] = str(exc)
                progress.done(f"FAILED: {str(exc).splitlines()[0]}")
                continue
            results += got
            progress.done(
                "; ".join(
                    f"{r.name} {r.figure:.4g} {r.unit}, ratio {r.ratio:.2f} ({'pass' if r.passed else 'FAIL'})"
                    for r in got
                )
            )
    except KeyboardInterrupt:
        return _error("interrupted")
    finally:
        if postgres is not None:
            postgres.close()
        if args.keep:
            print(f"bench: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    meta = {
        "scenarios": names,
        "duration": args.duration,
        "scale": args.scale,
        "kms_args": list(args.kms_arg),
        "seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "errors": errors,
        "skipped": skipped,
    }
    sys.stdout.write(render_json(results, meta) if args.json else render_table(results))
    for name, reason in skipped.items():
        print(f"bench: skipped {name}: {reason}", file=sys.stderr)
    for name, message in errors.items():
        print(f"bench: error: {name}: {message}", file=sys.stderr)
    if args.plot is not None and results:
        from bench.plot import write_charts

        for path in write_charts(results, args.plot):
            print(f"bench: wrote {path}", file=sys.stderr)
    return 1 if errors else 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
