"""fetch-key: FetchKey calls/s from 50+ enrolled identities, against a bare mTLS unary echo."""

from __future__ import annotations

from bench.context import BenchContext, split
from bench.kms import KmsServer
from bench.load import LoadSpec, Target
from bench.pki import Identity
from bench.results import Result
from bench.scenarios.common import throughput_result
from kms.v1 import keys_pb2

__all__ = ["ECHO_REQUEST", "fetch_key_target", "fetch_setup", "run"]

# "A few hundred bytes": about the size of a FetchKeyResponse (an RSA-2048 wrapped key and its names).
ECHO_REQUEST = b"e" * 320
KEY_NAME = "bench-key"


def depth_for(identities: int) -> int:
    # About a hundred calls in flight in all, spread over the identities' channels.
    return max(2, 64 // identities)


def fetch_setup(ctx: BenchContext, kms: KmsServer) -> list[Identity]:
    """Enrolls the fetching identities and makes the key they are granted (through their group)."""
    n = ctx.scale.identities
    ctx.progress.step(f"enrolling {n} identities")
    identities = kms.enroll_identities(ctx.agent_keys[:n], "fetch")
    kms.create_key(KEY_NAME)
    return identities


def fetch_key_target(kms: KmsServer, identities: tuple[Identity, ...], depth: int) -> Target:
    request = keys_pb2.FetchKeyRequest(name=KEY_NAME, version=0).SerializeToString()
    return Target(
        "seed-kms",
        "unary",
        kms.address,
        kms.ca_pem,
        identities,
        "/kms.v1.Keys/FetchKey",
        (request,),
        depth=depth,
    )


def echo_target(ctx: BenchContext, address: str, identities: tuple[Identity, ...], depth: int) -> Target:
    return Target(
        "echo",
        "unary",
        address,
        ctx.baseline_pki.ca_pem,
        identities,
        "/bench.Baseline/Echo",
        (ECHO_REQUEST,),
        depth=depth,
    )


def load_specs(
    ctx: BenchContext, echo_address: str, kms: KmsServer, identities: list[Identity]
) -> list[LoadSpec]:
    """Echo and FetchKey over the same number of channels (one per identity) and calls in flight."""
    workers = ctx.scale.client_processes
    depth = depth_for(len(identities))
    baseline_ids = ctx.baseline_clients(len(identities))
    return [
        LoadSpec((echo_target(ctx, echo_address, b, depth), fetch_key_target(kms, k, depth)))
        for b, k in zip(split(baseline_ids, workers), split(identities, workers), strict=True)
    ]


def run(ctx: BenchContext) -> list[Result]:
    with ctx.baseline_server("fetch-key-echo") as echo, ctx.kms_server("fetch-key") as kms:
        identities = fetch_setup(ctx, kms)
        out = ctx.run_load(
            load_specs(ctx, echo.fields["address"], kms, identities),
            "fetch-key",
            server_pids={"echo": echo.pid, "seed-kms": kms.pid},
        )
        kms.process.check_alive()
    return [
        throughput_result(
            "fetch-key",
            "",
            "FetchKey",
            "calls/s",
            out["seed-kms"],
            out["echo"],
            "echo",
            0.70,
            details={"identities": len(identities)},
        )
    ]
