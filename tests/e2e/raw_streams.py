"""What the stream attack stories share: their server, and agents' raw gRPC streams to it."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.groups import Group
from kms.handshake import Hello, Initiator, LocalIdentity, PeerInfo
from kms.v1 import handshake_pb2, handshake_pb2_grpc, revocation_pb2, revocation_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent_credentials, enroll

__all__ = [
    "ATTACK_RIG",
    "IN_MEMORY",
    "Channel",
    "Frame",
    "RawStream",
    "channel",
    "enrolled",
    "hello",
    "serial_of",
]

Frame = handshake_pb2.HandshakeFrame
# The relay, the exchange limits and the closing of streams live in the server's memory; the store
# plays no part in them beyond the revocation itself, which the first test runs on both backends.
IN_MEMORY = pytest.mark.sqlite_only("in-memory relay, limits and stream closing: the store plays no part")


ATTACK_RIG = Rig(
    "kmsat",
    # A long handshake timeout: a stalled exchange must end because of the revocation, not the timeout.
    # Revoked agents' refused calls must not lock every agent on 127.0.0.1 out (item 2, not ours).
    ("--handshake-timeout", "60s", "--heartbeat", "1s", "--auth-failure-rate", "100000"),
)


def enrolled(server: ServerProcess, root: Path, name: str) -> Path:
    state = root / name
    result = enroll(server, state, server.token(name))
    assert result.returncode == 0, result.stderr
    return state


def serial_of(state: Path) -> str:
    return format(x509.load_pem_x509_certificate((state / "agent.crt").read_bytes()).serial_number, "x")


def _local(state: Path) -> LocalIdentity:
    key = serialization.load_pem_private_key((state / "agent.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
    return LocalIdentity(key, (cert.public_bytes(serialization.Encoding.DER),))


def _anyone(chain: tuple[bytes, ...]) -> PeerInfo:
    raise AssertionError("these tests never get as far as checking the peer")


def hello(state: Path, responder: str, group: Group = Group.X25519) -> Hello:
    return Initiator(_local(state), _anyone, responder, group).start()


class RawStream:
    """A bidi or server stream opened with an agent's credentials, its ending timed by a thread."""

    def __init__(self, call: Any, out: queue.Queue[Frame | None] | None = None) -> None:
        self.call = call
        self.out = out
        self.received: list[Any] = []
        self.first = threading.Event()
        self.ended_at: float | None = None
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.received.append(message)
                self.first.set()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details() or ""
        self.ended_at = time.monotonic()
        self.first.set()
        self._done.set()

    def send(self, frame: Frame) -> None:
        assert self.out is not None
        self.out.put(frame)

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        if self.out is not None:
            self.out.put(None)
        self.call.cancel()


@dataclass
class Channel:
    channel: grpc.Channel
    handshake: Any
    revocation: Any

    def bidi(self, method: str) -> RawStream:
        out: queue.Queue[Frame | None] = queue.Queue()
        return RawStream(getattr(self.handshake, method)(iter(out.get, None)), out)

    def watch(self) -> RawStream:
        return RawStream(self.revocation.Watch(revocation_pb2.WatchRequest(after_seq=0)))


def channel(server: ServerProcess, state: Path) -> Channel:
    ch = grpc.secure_channel(server.address, agent_credentials(state))
    return Channel(ch, handshake_pb2_grpc.HandshakeStub(ch), revocation_pb2_grpc.RevocationStub(ch))
