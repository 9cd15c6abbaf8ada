"""A test-only attacker (issue 15, item 5): one enrolled agent replays one pre-built Hello on many
Exchange streams at once, as fast as the server answers, and drops each stream after the answer.

Usage: python -m tests.exchange_flood ADDRESS STATE_DIR HELLO_FILE SECONDS LANES
Prints one JSON object: how many Hellos the server answered, and how many calls ended with each
status code (with one example message per code).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import grpc


async def flood(address: str, state: Path, hello: bytes, seconds: float, lanes: int) -> dict[str, object]:
    creds = grpc.ssl_channel_credentials(
        (state / "ca.crt").read_bytes(),
        (state / "agent.key").read_bytes(),
        (state / "agent.crt").read_bytes(),
    )
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    async with grpc.aio.secure_channel(address, creds) as channel:
        exchange = channel.stream_stream("/kms.v1.Handshake/Exchange")  # bytes in, bytes out
        await channel.channel_ready()
        end = time.monotonic() + seconds

        async def lane() -> None:
            while time.monotonic() < end:
                call = exchange()
                try:
                    await call.write(hello)
                    await call.read()
                    counts["answered"] += 1
                except grpc.aio.AioRpcError as exc:
                    counts[exc.code().name] += 1
                    examples.setdefault(exc.code().name, exc.details() or "")
                finally:
                    call.cancel()

        await asyncio.gather(*(lane() for _ in range(lanes)))
    return {"counts": dict(counts), "examples": examples}


def main() -> None:
    address, state, hello_file, seconds, lanes = sys.argv[1:6]
    result = asyncio.run(
        flood(address, Path(state), Path(hello_file).read_bytes(), float(seconds), int(lanes))
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
