"""Test-only load from one enrolled agent (issue 15): many calls in flight at once, for some seconds.

    python -m tests.flood exchange ADDRESS STATE_DIR HELLO_FILE SECONDS LANES
        replays one pre-built Hello on Exchange streams as fast as the server answers, dropping
        each stream after the answer (item 5: the cost of a finite-field answer is the server's);
    python -m tests.flood fetch-key ADDRESS STATE_DIR KEY SECONDS LANES [STOP_FILE]
        FetchKey calls back to back (item 12: releases in flight while the agent is revoked).

With STOP_FILE, the load ends as soon as that file exists (or after SECONDS at most).

Prints one JSON object: how many calls succeeded, and how many ended with each status code
(with one example message per code).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from kms.v1 import keys_pb2

Call = Callable[[grpc.aio.Channel], Awaitable[None]]


def _exchange(hello: bytes) -> Call:
    async def call(channel: grpc.aio.Channel) -> None:
        stream = channel.stream_stream("/kms.v1.Handshake/Exchange")()  # bytes in, bytes out
        try:
            await stream.write(hello)
            await stream.read()
        finally:
            stream.cancel()

    return call


def _fetch_key(name: str) -> Call:
    request = keys_pb2.FetchKeyRequest(name=name).SerializeToString()

    async def call(channel: grpc.aio.Channel) -> None:
        await channel.unary_unary("/kms.v1.Keys/FetchKey")(request, timeout=30)

    return call


async def flood(
    address: str, state: Path, call: Call, seconds: float, lanes: int, stop: Path | None = None
) -> dict[str, object]:
    creds = grpc.ssl_channel_credentials(
        (state / "ca.crt").read_bytes(),
        (state / "agent.key").read_bytes(),
        (state / "agent.crt").read_bytes(),
    )
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    async with grpc.aio.secure_channel(address, creds) as channel:
        await channel.channel_ready()
        end = time.monotonic() + seconds

        async def lane() -> None:
            while time.monotonic() < end and not (stop is not None and stop.exists()):
                try:
                    await call(channel)
                    counts["ok"] += 1
                except grpc.aio.AioRpcError as exc:
                    counts[exc.code().name] += 1
                    examples.setdefault(exc.code().name, exc.details() or "")

        await asyncio.gather(*(lane() for _ in range(lanes)))
    return {"counts": dict(counts), "examples": examples}


def main() -> None:
    mode, address, state, what, seconds, lanes = sys.argv[1:7]
    stop = Path(sys.argv[7]) if len(sys.argv) > 7 else None
    call = _exchange(Path(what).read_bytes()) if mode == "exchange" else _fetch_key(what)
    result = asyncio.run(flood(address, Path(state), call, float(seconds), int(lanes), stop))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
