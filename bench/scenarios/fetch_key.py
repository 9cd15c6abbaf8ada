"""fetch-key: FetchKey calls/s from 50+ enrolled identities, against a bare mTLS unary echo; then
FetchKey of an RSA-3072 managed key pair's private key against FetchKey of the AES key, same run."""

from __future__ import annotations

from bench.context import BenchContext, LoadOutcome, split
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
PAIR_NAME = "bench-pair"
PAIR_TYPE = "rsa-3072"


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


def fetch_key_target(
    kms: KmsServer,
    identities: tuple[Identity, ...],
    depth: int,
    name: str = "seed-kms",
    *,
    pair: bool = False,
) -> Target:
    request = keys_pb2.FetchKeyRequest(
        name=PAIR_NAME if pair else KEY_NAME, version=0, key_pair=pair
    ).SerializeToString()
    return Target(
        name,
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


def pair_specs(ctx: BenchContext, kms: KmsServer, identities: list[Identity]) -> list[LoadSpec]:
    """The key pair's and the AES key's FetchKey, from the same identities, channels and depth."""
    depth = depth_for(len(identities))
    return [
        LoadSpec(
            (fetch_key_target(kms, ids, depth, "pair", pair=True), fetch_key_target(kms, ids, depth, "aes"))
        )
        for ids in split(identities, ctx.scale.client_processes)
    ]


def _pair_result(out: dict[str, LoadOutcome]) -> Result:
    return throughput_result(
        "fetch-key",
        f"{PAIR_TYPE} pair",
        f"FetchKey of an {PAIR_TYPE} key pair",
        "calls/s",
        out["pair"],
        out["aes"],
        "aes FetchKey",
        0.70,
        details={"key_type": PAIR_TYPE},
    )


def run(ctx: BenchContext) -> list[Result]:
    with ctx.baseline_server("fetch-key-echo") as echo, ctx.kms_server("fetch-key") as kms:
        identities = fetch_setup(ctx, kms)
        out = ctx.run_load(
            load_specs(ctx, echo.fields["address"], kms, identities),
            "fetch-key",
            server_pids={"echo": echo.pid, "seed-kms": kms.pid},
        )
        ctx.progress.step(f"making an {PAIR_TYPE} key pair")
        kms.create_key(PAIR_NAME, key_type=PAIR_TYPE)
        pairs = ctx.run_load(
            pair_specs(ctx, kms, identities), "fetch-key-pair", server_pids={"pair": kms.pid, "aes": kms.pid}
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
        ),
        _pair_result(pairs),
    ]
