"""exchange: agent-server X25519 handshakes/s with full certificate checks, against a bare bidi stream.

Each Seed KMS operation is one Handshake.Exchange stream on a long-lived mTLS
channel: Hello -> RespAuth, InitAuth -> Finished, then the end of the stream
(the server's audit record of it is batched with others: server/audit/trail.py). The client runs the agent's state
machine from kms.handshake and checks the server's chain (kms.peers); the
server checks the agent's chain and revocation status and signs. The baseline
is the same shape with no crypto: two round trips of the same sizes on a
bidirectional stream, then its end.
"""

from __future__ import annotations

from bench.context import BenchContext, split
from bench.load import LoadSpec, Target
from bench.results import Result
from bench.scenarios.common import throughput_result

__all__ = ["run"]

IDENTITIES_PER_WORKER = 4
DEPTH = 2  # exchanges in flight per channel


def run(ctx: BenchContext) -> list[Result]:
    workers = ctx.scale.client_processes
    count = IDENTITIES_PER_WORKER * workers
    with ctx.baseline_server("exchange-bidi") as base, ctx.kms_server("exchange") as kms:
        ctx.progress.step(f"enrolling {count} identities")
        identities = kms.enroll_identities(ctx.agent_keys[:count], "exchange")
        baseline_ids = ctx.baseline_clients(count)
        specs = [
            LoadSpec(
                (
                    Target(
                        "bidi",
                        "bidi",
                        base.fields["address"],
                        ctx.baseline_pki.ca_pem,
                        b,
                        "/bench.Baseline/Bidi",
                        (b"b" * 1200,),
                        depth=DEPTH,
                    ),
                    Target(
                        "seed-kms",
                        "handshake",
                        kms.address,
                        kms.ca_pem,
                        k,
                        "/kms.v1.Handshake/Exchange",
                        depth=DEPTH,
                    ),
                )
            )
            for b, k in zip(split(baseline_ids, workers), split(identities, workers), strict=True)
        ]
        out = ctx.run_load(specs, "exchange", server_pids={"bidi": base.pid, "seed-kms": kms.pid})
        kms.process.check_alive()
    return [
        throughput_result(
            "exchange", "x25519", "handshakes", "/s", out["seed-kms"], out["bidi"], "bidi", 0.50
        )
    ]
