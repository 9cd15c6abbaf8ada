"""Closed-loop load from a client process: unary calls, new connections, and round-trip streams.

A worker holds one or more targets (a baseline and Seed KMS) open at once and
drives them in the phases the coordinator schedules, alternating, so both
see the same machine noise. Each target has lanes: a lane does one operation
after another; an operation is timed from its start to its completion, and
counted in a phase only when it completes inside that phase. Warm-up calls
(connections, TLS sessions, caches on both sides) come before ``ready``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.pki import Identity
from bench.workers import WorkerLink

__all__ = ["LoadSpec", "PhaseResult", "Target", "load_worker"]

# Each channel its own TCP connection: without this, gRPC shares one
# connection between channels with equal arguments, and "a new connection"
# would not be one.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
_TIMEOUT = 30.0


@dataclass(frozen=True)
class Target:
    """One server as seen by a worker.

    kind: ``unary`` (a long-lived channel per identity, ``depth`` calls in
    flight on each), ``connect`` (a new channel for every call, ``depth``
    lanes; with no identities, server-authenticated TLS only), ``bidi`` (a
    stream per operation with two round trips), ``handshake`` (a Seed KMS
    X25519 exchange per operation, with full certificate checks).
    requests: raw request bytes, cycled; with ``consume`` each is used once
    (join tokens) and a lane stops when none are left.
    """

    name: str
    kind: str
    address: str
    ca_pem: bytes
    identities: tuple[Identity, ...]
    method: str
    requests: tuple[bytes, ...] = (b"",)
    warmup_requests: tuple[bytes, ...] = ()
    consume: bool = False
    depth: int = 1
    # unary with no identities: this many long-lived server-authenticated channels (enrollment).
    channels: int = 0


@dataclass(frozen=True)
class LoadSpec:
    targets: tuple[Target, ...]
    warmup: float = 1.0


@dataclass
class PhaseResult:
    target: str
    seconds: float
    count: int = 0
    errors: int = 0
    exhausted: bool = False
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # this client process's CPU time during the phase


class _Exhausted(Exception):
    pass


class _Requests:
    def __init__(self, items: tuple[bytes, ...], consume: bool) -> None:
        self._items = list(items)
        self._consume = consume
        self._cycle = itertools.cycle(items) if items else None
        self._next = 0

    def take(self) -> bytes:
        if not self._consume:
            assert self._cycle is not None
            return next(self._cycle)
        if self._next >= len(self._items):
            raise _Exhausted
        self._next += 1
        return self._items[self._next - 1]


def _credentials(ca_pem: bytes, identity: Identity | None) -> grpc.ChannelCredentials:
    if identity is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.ssl_channel_credentials(ca_pem, identity.key_pem, identity.cert_pem)


Op = Callable[[bytes], Awaitable[None]]


class _Driver:
    """Channels and lanes of one target; ``lanes()`` gives one operation per lane."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.requests = _Requests(target.requests, target.consume)
        self._channels: list[grpc.aio.Channel] = []

    async def open(self) -> None:
        t = self.target
        if t.kind == "connect":
            return
        for identity in t.identities or (None,) * t.channels:
            self._channels.append(
                grpc.aio.secure_channel(t.address, _credentials(t.ca_pem, identity), options=_OWN_CONNECTION)
            )
        for channel in self._channels:
            await asyncio.wait_for(channel.channel_ready(), _TIMEOUT)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def lanes(self) -> list[Op]:
        t = self.target
        if t.kind == "connect":
            identities = itertools.cycle(t.identities or (None,))
            return [self._connect_op(identities) for _ in range(t.depth)]
        make = {"unary": self._unary_op, "bidi": self._bidi_op, "handshake": self._handshake_op}[t.kind]
        owners = t.identities or (None,) * t.channels
        return [
            make(channel, identity)
            for channel, identity in zip(self._channels, owners, strict=True)
            for _ in range(t.depth)
        ]

    def _unary_op(self, channel: grpc.aio.Channel, identity: Identity | None) -> Op:
        call = channel.unary_unary(self.target.method)

        async def op(request: bytes) -> None:
            await call(request, timeout=_TIMEOUT)

        return op

    def _connect_op(self, identities: Any) -> Op:
        t = self.target
        creds = {id(i): _credentials(t.ca_pem, i) for i in (t.identities or (None,))}

        async def op(request: bytes) -> None:
            identity = next(identities)
            async with grpc.aio.secure_channel(
                t.address, creds[id(identity)], options=_OWN_CONNECTION
            ) as channel:
                await channel.unary_unary(t.method)(request, timeout=_TIMEOUT)

        return op

    def _bidi_op(self, channel: grpc.aio.Channel, identity: Identity | None) -> Op:
        method = channel.stream_stream(self.target.method)

        async def op(request: bytes) -> None:
            # Two round trips with the sizes of the handshake's messages, then the end of the stream.
            call = method(timeout=_TIMEOUT)
            for size in (96, 1200):
                await call.write(request[:size].ljust(size, b"."))
                if await call.read() == grpc.aio.EOF:
                    raise RuntimeError("bidi stream ended early")
            await call.done_writing()
            if await call.read() != grpc.aio.EOF:
                raise RuntimeError("bidi stream sent too much")

        return op

    def _handshake_op(self, channel: grpc.aio.Channel, identity: Identity | None) -> Op:
        # The agent's side of the exchange with the server, from the shared pure modules
        # (what agent/exchange.py runs, without its thread-per-stream sync plumbing).
        from kms.groups import Group
        from kms.handshake import Initiator, LocalIdentity
        from kms.handshake_wire import from_frame, to_frame
        from kms.peers import server_peer
        from kms.v1 import handshake_pb2

        assert identity is not None, "a handshake target needs identities"
        key = serialization.load_pem_private_key(identity.key_pem, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        cert = x509.load_pem_x509_certificate(identity.cert_pem)
        local = LocalIdentity(key, (cert.public_bytes(serialization.Encoding.DER),))
        ca = x509.load_pem_x509_certificate(self.target.ca_pem)
        host = self.target.address.rsplit(":", 1)[0]
        frame = handshake_pb2.HandshakeFrame
        method = channel.stream_stream(
            self.target.method,
            request_serializer=frame.SerializeToString,
            response_deserializer=frame.FromString,
        )

        async def op(request: bytes) -> None:
            machine = Initiator(local, server_peer([ca], host, datetime.now(UTC)), "server", Group.X25519)
            call = method(timeout=_TIMEOUT)
            await call.write(to_frame(machine.start()))
            init_auth = machine.receive(from_frame(await call.read()))
            assert init_auth is not None
            await call.write(to_frame(init_auth))
            machine.receive(from_frame(await call.read()))
            if machine.session is None:
                raise RuntimeError("handshake ended without a session")
            await call.done_writing()
            if await call.read() != grpc.aio.EOF:
                raise RuntimeError("the server sent more than the exchange needs")
            # The status: the server's side is done too.
            if await call.code() != grpc.StatusCode.OK:
                raise RuntimeError(f"the exchange ended with {await call.code()}")

        return op


async def _lane(op: Op, requests: _Requests, start: float, end: float, result: PhaseResult) -> None:
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    while (began := time.monotonic()) < end:
        try:
            request = requests.take()
        except _Exhausted:
            result.exhausted = True
            return
        try:
            await op(request)
        except Exception as exc:  # counted and shown; a broken target fails the warm-up
            result.errors += 1
            result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"[:300]
            continue
        done = time.monotonic()
        if done <= end:
            result.count += 1
            result.latencies.append(done - began)


async def _run_phase(driver: _Driver, lanes: list[Op], start: float, end: float) -> PhaseResult:
    result = PhaseResult(driver.target.name, end - start)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu = time.process_time()
    await asyncio.gather(*(_lane(op, driver.requests, start, end, result) for op in lanes))
    result.cpu_seconds = time.process_time() - cpu
    return result


async def load_worker(spec: LoadSpec, link: WorkerLink) -> list[PhaseResult]:
    """Opens every target, warms each up, then runs the phases it is sent: [(target, start, end)]."""
    drivers = {t.name: _Driver(t) for t in spec.targets}
    lanes: dict[str, list[Op]] = {}
    for name, driver in drivers.items():
        await driver.open()
        lanes[name] = driver.lanes()
        warm = _Driver(driver.target)  # same channels, its own (warm-up) requests
        warm.requests = _Requests(
            driver.target.warmup_requests or driver.target.requests, driver.target.consume
        )
        now = time.monotonic()
        probe = await _run_phase(warm, lanes[name], now, now + spec.warmup)
        if probe.count == 0:
            raise RuntimeError(f"{name}: no call succeeded during warm-up: {probe.first_error}")
    link.ready()
    phases: list[tuple[str, float, float]] = await link.command()
    results = [await _run_phase(drivers[name], lanes[name], start, end) for name, start, end in phases]
    for driver in drivers.values():
        await driver.close()
    return results
