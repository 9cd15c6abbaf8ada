"""enroll: enrollments/s, each a new connection, against a new mutual-TLS channel + one trivial call.

Tokens and CSRs are made before timing (CSRs reuse the run's agent keys: the
server takes only the public key and does the same checks for each). Both
CA key types run against the same connect baseline (P-256 CA), alternating
phases, and so does a P-256 CA whose key is in a SoftHSM2 token (--ca-key
pkcs11:...; left out, and said, where softhsm2 is not installed): its result
also gives its ratio to the software P-256 CA. Afterwards the store is asked how many agents it holds, which proves
the certificates were stored (each Enroll commits before it returns).
"""

from __future__ import annotations

import contextlib
import math
import time

from bench.context import BenchContext, split
from bench.kms import KmsServer
from bench.load import LoadSpec, Target
from bench.pki import Identity
from bench.results import Result
from bench.scenarios.common import throughput_result
from bench.softhsm import BenchHsm, softhsm_module
from kms.v1 import enrollment_pb2

__all__ = ["connect_target", "enroll_requests", "enroll_target", "run"]

HSM = "ecdsa-p256 HSM"  # the P-256 CA key in a SoftHSM2 token
CA_TYPES = ("ecdsa-p256", "rsa-3072", HSM)
# Enrollments/s a server is assumed to reach at most, to size the tokens made in advance;
# a phase that runs out says so (exhausted) and then under-reports.
CEILING = {"ecdsa-p256": 500, "rsa-3072": 400, HSM: 500}
LANES = 4  # connections being made at once per client process
WARMUP_TOKENS = 10


def enroll_requests(
    ctx: BenchContext, kms: KmsServer, count: int, workers: int, label: str = ""
) -> list[tuple[bytes, ...]]:
    """Per worker: enrollment requests, each with its own token, made now (outside the timing)."""
    ctx.progress.step(f"making {count} join tokens{f' ({label})' if label else ''}")
    tokens = kms.create_tokens([f"enroll-{i}" for i in range(count)])
    keys = ctx.agent_keys
    requests = [
        enrollment_pb2.EnrollRequest(join_token=t, csr_der=keys[i % len(keys)].csr_der).SerializeToString()
        for i, t in enumerate(tokens)
    ]
    return split(requests, workers)


def connect_target(ctx: BenchContext, address: str, identities: tuple[Identity, ...]) -> Target:
    """The baseline: a new mTLS connection and one echo each, LANES at once."""
    return Target(
        "connect",
        "connect",
        address,
        ctx.baseline_pki.ca_pem,
        identities,
        "/bench.Baseline/Echo",
        (b"c" * 16,),
        depth=LANES,
    )


def enroll_target(name: str, kms: KmsServer, requests: tuple[bytes, ...]) -> Target:
    """Enrollments over new connections, one token each (the first WARMUP_TOKENS warm up)."""
    return Target(
        name,
        "connect",
        kms.enroll_address,
        kms.ca_pem,
        (),
        "/kms.v1.Enrollment/Enroll",
        requests[WARMUP_TOKENS:],
        warmup_requests=requests[:WARMUP_TOKENS],
        consume=True,
        depth=LANES,
    )


def _tokens(ctx: BenchContext, kms: KmsServer, ca_type: str, workers: int) -> list[tuple[bytes, ...]]:
    count = math.ceil(CEILING[ca_type] * ctx.duration * 1.2) + workers * WARMUP_TOKENS
    return enroll_requests(ctx, kms, count, workers, f"{ca_type} CA")


def run(ctx: BenchContext) -> list[Result]:
    workers = ctx.scale.client_processes
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(ctx.baseline_server("enroll-connect"))
        servers = {
            "ecdsa-p256": stack.enter_context(ctx.kms_server("enroll-p256", "--ca-key-type", "ecdsa-p256")),
            "rsa-3072": stack.enter_context(ctx.kms_server("enroll-rsa3072", "--ca-key-type", "rsa-3072")),
        }
        module = softhsm_module()
        if module is None:
            ctx.progress.step("softhsm2 is not installed: enroll runs without its HSM-held CA")
        else:
            hsm = BenchHsm(ctx.root / "softhsm", module)
            hsm.init(ctx.root / "enroll-hsm" / "data", "enroll-ca", "ecdsa-p256")
            servers[HSM] = stack.enter_context(ctx.kms_server("enroll-hsm", *hsm.flags("enroll-ca")))
        per_server = {ca: _tokens(ctx, kms, ca, workers) for ca, kms in servers.items()}
        baseline_ids = split(ctx.baseline_clients(LANES * workers), workers)
        specs = []
        for w in range(workers):
            targets = [connect_target(ctx, base.fields["address"], baseline_ids[w])]
            targets += [enroll_target(ca, kms, per_server[ca][w]) for ca, kms in servers.items()]
            specs.append(LoadSpec(tuple(targets)))
        started = time.monotonic()
        out = ctx.run_load(
            specs, "enroll", server_pids={"connect": base.pid, **{ca: k.pid for ca, k in servers.items()}}
        )
        ctx.progress.step(f"load done in {time.monotonic() - started:.0f}s; counting stored agents")
        stored = {ca: kms.agents_enrolled() for ca, kms in servers.items()}
    connect = out["connect"]
    results = []
    for ca in (ca for ca in CA_TYPES if ca in out):
        kms_out = out[ca]
        versus = {"vs_software_p256": kms_out.rate / out["ecdsa-p256"].rate} if ca == HSM else {}
        result = throughput_result(
            "enroll",
            f"{ca} CA",
            "enrollments",
            "/s",
            kms_out,
            connect,
            "connect (P-256 CA)",
            0.60,
            details={
                "agents_stored": stored[ca],
                **versus,
                **({"tokens_ran_out": True} if kms_out.exhausted else {}),
            },
            samples={ca: kms_out.latencies, "connect": connect.latencies},
        )
        results.append(result)
    return results
