"""Story (issue 20): the Listen/Exchange relay when the listener and the initiator are on different workers.

The server runs `--workers 2`; each agent's connection is opened again until it lands
on the worker the test wants (the kernel spreads connections over the workers'
SO_REUSEPORT sockets), told by /proc: which worker process holds the server's end of
the connection. The handshake runs in this process, with the agents' real keys, so
the test sees each frame arrive.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.handshake import Initiator, LocalIdentity, PeerCheck, Responder
from kms.handshake_wire import from_frame, to_frame
from kms.peers import agent_peer
from kms.v1 import handshake_pb2, handshake_pb2_grpc
from tests import harness
from tests.e2e.raw_streams import Frame, RawStream
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent_credentials, query
from tests.workers import children, on_worker

RIG = Rig("kmsrl", ("--handshake-timeout", "6s"), agents=(("a", ()), ("b", ()), ("c", ())))


@pytest.fixture(scope="module")
def server_workers() -> Iterator[int]:
    """This module's server always runs two workers (on each backend)."""
    previous = harness.use_workers(2)
    try:
        yield 2
    finally:
        harness.use_workers(previous)


def _workers(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    return children(server.proc.pid)


class _Agent:
    """One agent's own connection to the server, on a chosen worker."""

    def __init__(self, server: ServerProcess, state: Path, worker: int) -> None:
        self.state = state
        assert server.proc is not None

        def open_one() -> grpc.Channel:
            # Its own connection: channels in one process share connections unless told not to.
            channel = grpc.secure_channel(
                server.address, agent_credentials(state), options=[("grpc.use_local_subchannel_pool", 1)]
            )
            grpc.channel_ready_future(channel).result(timeout=20)
            return channel

        port = int(server.address.rsplit(":", 1)[1])
        self.channel = on_worker(server.proc.pid, port, worker, open_one, tries=60)
        self.stub = handshake_pb2_grpc.HandshakeStub(self.channel)

    def stream(self, method: str) -> RawStream:
        out: queue.Queue[Frame | None] = queue.Queue()
        return RawStream(getattr(self.stub, method)(iter(out.get, None)), out)

    def close(self) -> None:
        self.channel.close()


def _nth(stream: RawStream, n: int, timeout: float = 20.0) -> Frame:
    deadline = time.monotonic() + timeout
    while len(stream.received) < n:
        assert stream.code is None, f"the stream ended: {stream.code} {stream.details}"
        assert time.monotonic() < deadline, f"frame {n} never came"
        time.sleep(0.01)
    frame: Frame = stream.received[n - 1]
    return frame


def _identity(state: Path) -> LocalIdentity:
    key = serialization.load_pem_private_key((state / "agent.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
    return LocalIdentity(key, (cert.public_bytes(serialization.Encoding.DER),))


def _check(state: Path, expected: str) -> PeerCheck:
    ca = x509.load_pem_x509_certificate((state / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    trust_domain = uri.split("/")[2]
    return agent_peer([ca], trust_domain, expected, datetime.now(UTC), lambda serial: False)


def _listen(agent: _Agent) -> RawStream:
    listen = agent.stream("Listen")
    listen.send(Frame(listen=handshake_pb2.ListenStart()))
    return listen


def _hello_delivered(initiator: _Agent, listen: RawStream, listener: str) -> tuple[Initiator, RawStream]:
    """An Exchange whose hello reached the listener (sent again while it is not registered yet)."""
    deadline = time.monotonic() + 20
    while True:
        machine = Initiator(_identity(initiator.state), _check(initiator.state, listener), listener)
        exchange = initiator.stream("Exchange")
        exchange.send(to_frame(machine.start()))
        while exchange.code is None and not listen.received:
            assert time.monotonic() < deadline, "the hello never reached the listener"
            time.sleep(0.01)
        if listen.received:
            return machine, exchange
        assert "not listening" in exchange.details, exchange.details
        time.sleep(0.05)


def _agree(initiator: _Agent, listener: _Agent, listen: RawStream) -> None:
    """One whole exchange from initiator to listener (listening on listen), both sides checked."""
    me, peer = initiator.state.name, listener.state.name
    responder = Responder(_identity(listener.state), _check(listener.state, me), peer)
    machine, exchange = _hello_delivered(initiator, listen, peer)
    listen.send(to_frame(responder.receive(from_frame(_nth(listen, 1)))))
    init_auth = machine.receive(from_frame(_nth(exchange, 1)))
    assert init_auth is not None
    exchange.send(to_frame(init_auth))
    listen.send(to_frame(responder.receive(from_frame(_nth(listen, 2)))))
    assert machine.receive(from_frame(_nth(exchange, 2))) is None
    exchange.send(None)  # type: ignore[arg-type]  # the initiator half-closes
    assert exchange.wait(10) and listen.wait(10)
    assert (exchange.code, listen.code) == (grpc.StatusCode.OK, grpc.StatusCode.OK), (
        exchange.details,
        listen.details,
    )
    assert machine.session is not None and responder.session is not None
    assert machine.session.key == responder.session.key
    assert (machine.session.peer.name, responder.session.peer.name) == (peer, me)


def test_agents_on_different_workers_agree_through_the_server_both_ways(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    workers = _workers(server)
    assert len(workers) == 2
    for listener_worker, initiator_worker in (workers, workers[::-1]):
        b = _Agent(server, root / "b", listener_worker)
        a = _Agent(server, root / "a", initiator_worker)
        try:
            _agree(a, b, _listen(b))
        finally:
            a.close()
            b.close()
    # The initiator's worker records each relay, as one process does.
    deadline = time.monotonic() + 10
    while len(query(server, "SELECT seq FROM audit WHERE action='exchange.relay'")) < 2:
        assert time.monotonic() < deadline, "the relays were not audited"
        time.sleep(0.2)


def test_a_listener_revoked_mid_way_on_the_other_worker_refuses_the_initiator_as_one_process_does(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    listener_worker, initiator_worker = _workers(server)
    c = _Agent(server, root / "c", listener_worker)
    a = _Agent(server, root / "a", initiator_worker)
    try:
        listen = _listen(c)
        _, exchange = _hello_delivered(a, listen, "c")  # a waits for c's answer
        server.admin("revoke", "agent", "--yes", "c")
        assert exchange.wait(5), "the initiator still waits after its listener was revoked"
        assert exchange.code == grpc.StatusCode.FAILED_PRECONDITION, (exchange.code, exchange.details)
        assert "the responder gave up" in exchange.details
        assert listen.wait(5) and listen.code == grpc.StatusCode.UNAUTHENTICATED
        # From now on, the one answer for an unknown, revoked or absent agent.
        for peer in ("c", "nobody"):
            again = a.stream("Exchange")
            again.send(to_frame(Initiator(_identity(root / "a"), _check(root / "a", peer), peer).start()))
            assert again.wait(10) and again.code == grpc.StatusCode.FAILED_PRECONDITION
            assert again.details.replace(repr(peer), "NAME").startswith("agent NAME is not listening"), (
                again.details
            )
    finally:
        a.close()
        c.close()


def test_a_listener_whose_worker_is_killed_ends_the_pending_exchange_at_once_and_the_restarted_worker_relays(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    listener_worker, initiator_worker = _workers(server)
    b = _Agent(server, root / "b", listener_worker)
    a = _Agent(server, root / "a", initiator_worker)
    try:
        a_listens = _listen(a)  # on the worker that stays: the restarted one must learn of it
        listen = _listen(b)
        _, exchange = _hello_delivered(a, listen, "b")  # a waits for b's answer
        killed = time.monotonic()
        os.kill(listener_worker, signal.SIGKILL)
        assert exchange.wait(10)
        took = time.monotonic() - killed
        assert exchange.code == grpc.StatusCode.FAILED_PRECONDITION, (exchange.code, exchange.details)
        assert "the responder gave up" in exchange.details
        assert took < 3.0, f"the exchange ended {took:.2f} s after the listener's worker died (timeout 6 s)"
        assert listen.wait(10) and listen.code == grpc.StatusCode.UNAVAILABLE
        # The supervisor starts the worker again; it learns who listens on the other one, and serves.
        deadline = time.monotonic() + 30
        while len(restarted := set(_workers(server)) - {initiator_worker, listener_worker}) != 1:
            assert time.monotonic() < deadline, "the killed worker was not started again"
            time.sleep(0.2)
        b.close()
        b = _Agent(server, root / "b", restarted.pop())
        _agree(b, a, a_listens)
    finally:
        a.close()
        b.close()


def test_two_listens_of_one_agent_on_two_workers_leave_one_as_one_process_does(
    rig: tuple[ServerProcess, Path],
) -> None:
    """Sent at once: whether the second is refused at once (the first one's note came first) or
    both are admitted and the later one ends, one of them ends with the error a second Listen
    gets in one process, and the other serves. (The race itself is forced, both ways, in
    tests/unit/server/test_exchange_relay.py: here it is rarely hit.)"""
    server, root = rig
    agents = [_Agent(server, root / "b", worker) for worker in _workers(server)]
    a = _Agent(server, root / "a", _workers(server)[0])
    try:
        streams = [agent.stream("Listen") for agent in agents]
        for stream in streams:
            stream.send(Frame(listen=handshake_pb2.ListenStart()))
        deadline = time.monotonic() + 5
        while all(stream.code is None for stream in streams):
            assert time.monotonic() < deadline, "both Listens of agent b are still open"
            time.sleep(0.01)
        time.sleep(0.5)  # the other one stays
        (ended,) = [stream for stream in streams if stream.code is not None]
        assert ended.code == grpc.StatusCode.FAILED_PRECONDITION, (ended.code, ended.details)
        assert "agent 'b' is already listening on another stream" in ended.details
        (survivor,) = [stream for stream in streams if stream is not ended]
        _agree(a, agents[streams.index(survivor)], survivor)
    finally:
        a.close()
        for agent in agents:
            agent.close()
