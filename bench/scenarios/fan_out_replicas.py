"""fan-out-replicas: fan-out across two kms-server replicas sharing one PostgreSQL database.

The same measurement as fan-out (``fan_out.measure``), with Seed KMS run as a
deployment of two replicas:

1. a private PostgreSQL cluster for the run (fsync on, the defaults), a
   fresh database per N;
2. replica A starts first on the empty database (it creates the CA and the
   master key in its data dir), replica B starts with A's master key file;
3. the watching identities enroll through A; half of the N streams watch A,
   half watch B (one client process each at both scales);
4. key versions are revoked through A's admin socket. A round's latency is the
   last arrival on either replica minus the instant A's Revoke returned
   (durable in PostgreSQL). A publishes its own event as it commits; B learns
   of it from PostgreSQL's NOTIFY and reads it from the shared log.

Besides the overall p50/p99, each replica's watchers are timed apart: "same"
(on A, where the revocation was made) and "other" (on B, across replicas).
The baseline is fan-out's broadcast (one bare process, all N streams): the
same figures when fan-out ran earlier in the run, else measured here. Both
ratios then share one denominator, and fan-out-replicas' ratio over
fan-out's is what the second replica and PostgreSQL cost.

Needs PostgreSQL's server binaries (initdb, pg_ctl, postgres, psql); without
them the scenario is skipped, with the reason in the output. The cluster is
started in the background during the run's set-up (bench/postgres.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from bench.context import BenchContext
from bench.kms import KmsServer
from bench.procs import BenchError
from bench.results import Result, median, percentile
from bench.scenarios.fan_out import (
    REVOKED_KEY,
    FanoutRun,
    broadcast_baseline,
    fanout_result,
    kms_watch_setup,
    measure,
    prime_stream,
    rounds_for,
    watch_request,
    watch_specs,
)

if TYPE_CHECKING:
    from tests.pg import PostgresCluster

__all__ = ["NEEDS_POSTGRESQL", "run"]

# The run starts a private cluster for it in the background (bench/postgres.py), or,
# without PostgreSQL's binaries, skips it with the reason.
NEEDS_POSTGRESQL = True
SCENARIO = "fan-out-replicas"
_WATCH = "/kms.v1.Revocation/Watch"


@contextlib.contextmanager
def _replicas(ctx: BenchContext, label: str, url: str) -> Iterator[tuple[KmsServer, KmsServer]]:
    """Replica A on the empty database (it creates the CA and master.key), then B with A's key."""
    with ctx.kms_server(f"{label}-a", "--database", url) as a:
        master_key = a.data_dir / "master.key"
        with ctx.kms_server(f"{label}-b", "--database", url, "--master-key-file", str(master_key)) as b:
            if b.ca_pem != a.ca_pem:
                raise BenchError(f"{label}: replicas A and B serve different CAs")
            yield a, b


def _run_replicas(ctx: BenchContext, cluster: PostgresCluster, n: int, workers: int) -> FanoutRun:
    label = f"{SCENARIO}-{n}"
    url = cluster.create_database(f"fanout_replicas_{n}")
    with _replicas(ctx, label, url) as (a, b):
        ctx.progress.step(f"seed-kms x2 N={n}: enrolling {workers} watching identities through A")
        identities, seq = kms_watch_setup(ctx, a, workers, "watch")
        # Half the client processes (at least one) and half the streams on each replica.
        on_a = max(1, workers // 2)
        specs = watch_specs("kms", a.address, a.ca_pem, identities[:on_a], n // 2, after_seq=seq - 1)
        specs += watch_specs("kms", b.address, b.ca_pem, identities[on_a:], n - n // 2, after_seq=seq - 1)

        def prime() -> None:
            for server in (a, b):
                prime_stream(server.address, server.ca_pem, identities[0], _WATCH, watch_request(seq))

        run = measure(
            ctx,
            f"seed-kms x2 N={n}",
            [a.pid, b.pid],
            specs,
            seq,
            lambda: a.revoke_key(REVOKED_KEY),
            rounds_for(ctx, n),
            prime,
            groups={"same": range(on_a), "other": range(on_a, len(specs))},
        )
        a.process.check_alive()
        b.process.check_alive()
        return run


def _split_details(run: FanoutRun) -> dict[str, float]:
    """p50/p99 of the watchers on A (same replica) and on B (other), and B's lag behind A per round."""
    same, other = run.groups["same"], run.groups["other"]
    return {
        "same_replica_p50_ms": percentile(same, 50) * 1000,
        "same_replica_p99_ms": percentile(same, 99) * 1000,
        "other_replica_p50_ms": percentile(other, 50) * 1000,
        "other_replica_p99_ms": percentile(other, 99) * 1000,
        # Per round, B's last arrival minus A's: what crossing replicas adds.
        "other_minus_same_p50_ms": median(o - s for o, s in zip(other, same, strict=True)) * 1000,
    }


def run(ctx: BenchContext) -> list[Result]:
    workers = ctx.scale.client_processes
    if workers < 2:
        raise BenchError(f"{SCENARIO} needs at least 2 client processes, one per replica")
    cluster = ctx.postgres_cluster()
    results = []
    for n in ctx.scale.fanout:
        base = broadcast_baseline(ctx, n, workers)
        kms = _run_replicas(ctx, cluster, n, workers)
        # Memory is reported (both replicas' RSS growth over N) but not a target here:
        # the target is fan-out's p99 ratio.
        result = fanout_result(SCENARIO, n, kms, base, memory_target=False)
        result.details.update(_split_details(kms))
        results.append(result)
    return results
