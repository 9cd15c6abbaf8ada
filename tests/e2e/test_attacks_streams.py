"""Adversarial stories for issue 15 (streams, exchanges, renewals, releases): items 3, 5, 6, 12 and 13.

Each test attacks as the review did and fails on the code before the fix.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
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
from kms.handshake_wire import to_frame
from kms.v1 import handshake_pb2, handshake_pb2_grpc, revocation_pb2, revocation_pb2_grpc
from tests.harness import (
    ServerProcess,
    WatchProcess,
    agent_credentials,
    enroll,
    exe,
    short_tmpdir,
)

Frame = handshake_pb2.HandshakeFrame


@pytest.fixture(scope="module")
def rig(backend: str) -> Iterator[tuple[ServerProcess, Path]]:
    root = short_tmpdir("kmsat")
    # A long handshake timeout: a stalled exchange must end because of the revocation, not the timeout.
    server = ServerProcess(root / "d", extra_args=["--handshake-timeout", "60s", "--heartbeat", "1s"]).start()
    try:
        yield server, root
    finally:
        code = server.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, server.output()


def _enroll(server: ServerProcess, root: Path, name: str) -> Path:
    state = root / name
    result = enroll(server, state, server.token(name))
    assert result.returncode == 0, result.stderr
    return state


def _serial(state: Path) -> str:
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


def _listening(ch: Channel) -> RawStream:
    stream = ch.bidi("Listen")
    stream.send(Frame(listen=handshake_pb2.ListenStart()))
    return stream


def _wait_until_listening(server: ServerProcess, state: Path, deadline: float = 20.0) -> None:
    """Waits until the agent's own Listen stream is registered: a second one is then refused."""
    ch = channel(server, state)
    try:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            probe = _listening(ch)
            probe.wait(0.3)
            probe.close()
            probe.wait(5)
            if "already listening" in probe.details:
                return
            time.sleep(0.1)
        raise AssertionError("the agent never started listening")
    finally:
        ch.channel.close()


def _revoke_timed(server: ServerProcess, *args: str) -> float:
    server.admin("revoke", *args)
    return time.monotonic()


def _popen(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [exe("kms-agent"), *args, "--dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


# --- item 3: every stream a revoked certificate holds closes, with UNAUTHENTICATED --------------


def test_watch_listen_and_exchange_streams_close_within_a_second_of_revocation(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    raw = _enroll(server, root, "raw")
    ch = channel(server, raw)
    try:
        watch = ch.watch()
        listen = _listening(ch)
        exchange = ch.bidi("Exchange")  # stalled after the server's answer: it waits for init_auth
        exchange.send(to_frame(hello(raw, "server")))
        assert exchange.first.wait(10) and exchange.code is None, exchange.details
        assert watch.first.wait(10) and watch.code is None, watch.details  # a heartbeat: it is open
        time.sleep(0.3)
        assert listen.code is None, listen.details

        revoked = _revoke_timed(server, "agent", "raw")
        for name, stream in (("Watch", watch), ("Listen", listen), ("Exchange", exchange)):
            assert stream.wait(5), f"the {name} stream of a revoked agent is still open after 5 s"
            assert stream.ended_at is not None
            took = stream.ended_at - revoked
            assert stream.code == grpc.StatusCode.UNAUTHENTICATED, (name, stream.code, stream.details)
            assert "was revoked" in stream.details, (name, stream.details)
            assert took < 1.0, f"the {name} stream closed {took:.2f} s after the revocation"
    finally:
        ch.channel.close()


def test_revoked_agents_listen_watch_and_exchange_commands_exit_with_their_revoked_status(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    lis, wat, ini, bait = (_enroll(server, root, n) for n in ("lis", "wat", "ini", "bait"))
    # The initiator's exchange goes to a listener (this test) that never answers: it stays in progress.
    bait_ch = channel(server, bait)
    listener = _listening(bait_ch)
    procs: list[subprocess.Popen[str]] = []
    watcher = WatchProcess(wat)
    try:
        procs.append(_popen(lis, "listen"))
        _wait_until_listening(server, lis)
        procs.append(_popen(ini, "exchange", "--peer", "bait", "--handshake-timeout", "60"))
        assert listener.first.wait(20), "the exchange never reached the listener"

        for proc, state, how in (
            (procs[0], lis, ("agent", "lis")),
            (procs[1], ini, ("cert", _serial(ini))),
        ):
            revoked = _revoke_timed(server, *how)
            code = proc.wait(10)
            took = time.monotonic() - revoked
            err = proc.stderr.read() if proc.stderr else ""
            assert code == 11, f"{state.name} exited {code}: {err}"
            assert "was revoked" in err and "Traceback" not in err, err
            assert took < 3.0, f"{state.name} exited {took:.2f} s after its revocation"
        revoked = _revoke_timed(server, "agent", "wat")
        assert watcher.proc.wait(10) == 11
        assert time.monotonic() - revoked < 3.0
    finally:
        watcher.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        listener.close()
        bait_ch.channel.close()
