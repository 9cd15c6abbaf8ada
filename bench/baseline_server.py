"""The bare-stack ceiling: a grpc.aio mutual-TLS server with nothing of Seed KMS in it.

Run as its own process (``python -m bench.baseline_server --dir DIR``), like
kms-server, on the same event loop, TLS mode and key types, with generic
handlers on raw bytes so no protobuf or domain code is in the way:

- ``/bench.Baseline/Echo``: unary, returns the request (the unary ceiling);
- ``/bench.Baseline/Subscribe``: server stream; one ``subscribed`` frame at once,
  then every published message (the fan-out ceiling);
- ``/bench.Baseline/Bidi``: bidirectional, answers each message with itself
  (the handshake's round trips without its crypto).

``/bench.Control/Publish`` on a UNIX socket (local credentials, like the
kms-server admin socket) pushes one message to every open Subscribe stream
and returns once it is queued for all, as Revoke returns once published.
The first stdout line is ``bench-baseline ready address=... admin-socket=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

__all__ = ["SUBSCRIBED", "main"]

# The first frame of every Subscribe stream: sequence 0 means "you are subscribed".
SUBSCRIBED = (0).to_bytes(8, "big") + b"subscribed"

# The same channel-independent options kms-server sets (server/listeners.py GRPC_OPTIONS), so only the code differs.
OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", 262_144),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]


class _Hub:
    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue[bytes]] = set()

    async def echo(self, request: bytes, context: Any) -> bytes:
        return request

    async def subscribe(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(1024)
        self.subscribers.add(queue)
        try:
            yield SUBSCRIBED
            while True:
                yield await queue.get()
        finally:
            self.subscribers.discard(queue)

    async def bidi(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message

    async def publish(self, request: bytes, context: Any) -> bytes:
        # put_nowait to each queue, as the Seed KMS feed does: never wait for one subscriber.
        for queue in list(self.subscribers):
            queue.put_nowait(request)
        return len(self.subscribers).to_bytes(8, "big")


async def _serve(directory: Path, listen: str, admin_socket: str) -> None:
    hub = _Hub()
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Baseline",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(hub.echo),
                    "Subscribe": grpc.unary_stream_rpc_method_handler(hub.subscribe),
                    "Bidi": grpc.stream_stream_rpc_method_handler(hub.bidi),
                },
            )
        ]
    )
    credentials = grpc.ssl_server_credentials(
        [((directory / "server.key").read_bytes(), (directory / "server.crt").read_bytes())],
        root_certificates=(directory / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port(listen, credentials)
    control = grpc.aio.server(options=OPTIONS)
    control.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Control", {"Publish": grpc.unary_unary_rpc_method_handler(hub.publish)}
            )
        ]
    )
    control.add_secure_port(
        f"unix:{admin_socket}", grpc.local_server_credentials(grpc.LocalConnectionType.UDS)
    )
    await server.start()
    await control.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    host = listen.rsplit(":", 1)[0]
    print(f"bench-baseline ready address={host}:{port} admin-socket={admin_socket}", flush=True)
    await stopping.wait()
    await asyncio.gather(server.stop(0.5), control.stop(0.5))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_server")
    parser.add_argument("--dir", required=True, type=Path, help="holds ca.crt, server.crt, server.key")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--admin-socket", required=True)
    args = parser.parse_args()
    serve = _serve(args.dir, args.listen, args.admin_socket)
    # The event loop kms-server runs on (server/ops/eventloop.py: uvloop where installed): the same
    # stack, or the ratios would credit Seed KMS with its loop rather than measure its own code.
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve)
    else:
        uvloop.run(serve)


if __name__ == "__main__":
    main()
