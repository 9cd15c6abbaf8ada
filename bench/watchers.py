"""Watcher processes: many open server streams, and when each message reached each of them.

For every message sequence number a worker keeps how many of its streams got
it and the first and last arrival (time.monotonic()). As soon as all its
streams have one, it reports ``(seq, count, first, last)``; the coordinator
takes the last arrival over all workers, minus the instant the trigger call
returned, as that round's fan-out latency.

Seed KMS streams are Revocation.Watch (after_seq = the last event minus one,
so the replay of that one event proves the stream is open and subscribed);
baseline streams are Subscribe, whose first frame says the same.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from bench.pki import Identity
from bench.workers import WorkerLink

__all__ = ["WatchSpec", "WatchSummary", "watch_worker"]

_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# Streams being opened at once per worker: all of them, like a fleet reconnecting
# after a restart. A gRPC core server cancels new streams beyond
# grpc.server.max_pending_requests (default 1,000) that the application has not
# picked up yet; kms-server (and so the baseline) raise it to 20,000.
OPENING_AT_ONCE = 5000


@dataclass(frozen=True)
class WatchSpec:
    kind: str  # "kms" or "baseline"
    address: str
    ca_pem: bytes
    identity: Identity
    streams: int
    channels: int
    after_seq: int = 0  # kms only


@dataclass
class WatchSummary:
    streams: int
    errors: int = 0
    first_error: str = ""
    heartbeats: int = 0
    # seq -> [count, first arrival, last arrival] for every sequence seen.
    arrivals: dict[int, list[float]] = field(default_factory=dict)


def _baseline_seq(raw: bytes) -> int | None:
    return int.from_bytes(raw[:8], "big")


def _kms_seq(raw: bytes) -> int | None:
    from kms.v1 import revocation_pb2

    message = revocation_pb2.WatchResponse.FromString(raw)
    return message.event.seq if message.WhichOneof("item") == "event" else None


async def watch_worker(spec: WatchSpec, link: WorkerLink) -> WatchSummary:
    """Opens spec.streams streams over spec.channels connections; reports each sequence once all have it."""
    summary = WatchSummary(spec.streams)
    creds = grpc.ssl_channel_credentials(spec.ca_pem, spec.identity.key_pem, spec.identity.cert_pem)
    channels = [
        grpc.aio.secure_channel(spec.address, creds, options=_OWN_CONNECTION) for _ in range(spec.channels)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 60)
    if spec.kind == "kms":
        from kms.v1 import revocation_pb2

        method, parse = "/kms.v1.Revocation/Watch", _kms_seq
        request = revocation_pb2.WatchRequest(after_seq=spec.after_seq).SerializeToString()
    else:
        method, parse, request = "/bench.Baseline/Subscribe", _baseline_seq, b""
    arrivals = summary.arrivals

    opening = asyncio.Semaphore(OPENING_AT_ONCE)

    async def read(channel: grpc.aio.Channel) -> None:
        await opening.acquire()
        held = True
        call = channel.unary_stream(method)(request)
        try:
            async for raw in call:
                if held:  # the first message proves the stream is open
                    opening.release()
                    held = False
                now = time.monotonic()
                seq = parse(raw)
                if seq is None:
                    summary.heartbeats += 1
                    continue
                entry = arrivals.get(seq)
                if entry is None:
                    arrivals[seq] = entry = [0, now, now]
                entry[0] += 1
                entry[2] = now
                if entry[0] == spec.streams:
                    link.report((seq, spec.streams, entry[1], now))
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            if held:
                opening.release()
            summary.errors += 1
            if not summary.first_error:
                # Said at once: the coordinator would otherwise wait out the round for this stream.
                summary.first_error = f"{exc.code().name}: {exc.details()}"
                link.report(("error", summary.first_error))

    tasks = [asyncio.create_task(read(channels[i % len(channels)])) for i in range(spec.streams)]
    link.ready()
    await link.command()  # "stop"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return summary
