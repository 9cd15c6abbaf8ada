"""Key exchanges from the agent's side: initiate (with the server or an agent), or listen for one.

The agent runs kms.handshake's state machines and only moves frames over the
stream. Peer checks: the server is verified as the server of the pinned CA
for the configured host; an agent peer by chain, name, validity now, and a
revocation check asked of the server (which relays but cannot forge a peer's
signature).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from cryptography import x509

from agent.client import Endpoint, KmsClient
from agent.issuance import trust_domain_of
from agent.state import AgentIdentity
from agent.watchdog import Watchdog
from kms.addresses import parse_hostport
from kms.errors import DeadlineExceeded, FailedPrecondition
from kms.groups import Group
from kms.handshake import Hello, Initiator, LocalIdentity, PeerInfo, Responder, Session
from kms.handshake_wire import from_frame, to_frame
from kms.peers import agent_peer, server_peer
from kms.v1 import handshake_pb2, revocation_pb2

__all__ = ["initiate", "respond_once"]

Frame = handshake_pb2.HandshakeFrame


def _local(identity: AgentIdentity) -> LocalIdentity:
    from cryptography.hazmat.primitives.serialization import Encoding

    return LocalIdentity(identity.key, (identity.cert.public_bytes(Encoding.DER),))


def _trust_domain(identity: AgentIdentity) -> str:
    return trust_domain_of(identity.settings.spiffe_id)


def _ca(identity: AgentIdentity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(identity.ca_bundle_pem)


def _revocation_check(endpoint: Endpoint) -> Callable[[str], bool]:
    """Asks the server relaying this exchange (the same deployment) whether a serial is revoked."""

    def is_revoked(serial: str) -> bool:
        request = revocation_pb2.CheckCertificateRequest(serial=serial)
        answer = endpoint.call(endpoint.revocation.CheckCertificate, request)
        return cast(revocation_pb2.CheckCertificateResponse, answer).status != "good"

    return is_revoked


class _Stream:
    """A bidi call fed from a queue, read with a per-message deadline."""

    def __init__(self, method: Any, timeout: float, first_timeout: float | None = None) -> None:
        self._out: queue.Queue[Frame | None] = queue.Queue()
        self._call = method(iter(self._out.get, None))
        self._timeout = timeout
        self._watchdog = Watchdog(first_timeout or timeout, self._call.cancel) if first_timeout != 0 else None
        self._responses: Iterator[Frame] = iter(self._call)

    def send(self, frame: Frame) -> None:
        self._out.put(frame)

    def receive(self, endpoint: Endpoint, what: str) -> Frame:
        try:
            frame = next(self._responses)
        except StopIteration:
            raise FailedPrecondition(f"the server ended the exchange before {what}") from None
        except grpc.RpcError as exc:
            if (
                exc.code() == grpc.StatusCode.CANCELLED
                and self._watchdog is not None
                and self._watchdog.fired
            ):
                if not endpoint.connected:  # never connected: the address, not the peer, is silent
                    raise endpoint.unreachable(f"no connection while waiting for {what}") from None
                raise DeadlineExceeded(f"the handshake stalled waiting for {what}") from None
            raise endpoint.map_error(exc) from None
        if self._watchdog is not None:
            self._watchdog.reset()
        else:
            self._watchdog = Watchdog(self._timeout, self._call.cancel)
        return frame

    def wait_end(self, endpoint: Endpoint) -> None:
        """Half-closes and waits until the server ends the stream (so the last frame was delivered)."""
        self._out.put(None)
        try:
            for _ in self._responses:
                raise FailedPrecondition("the server sent more than the exchange needs")
        except grpc.RpcError as exc:
            raise endpoint.map_error(exc) from None

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._out.put(None)
        self._call.cancel()


def initiate(identity: AgentIdentity, client: KmsClient, peer: str, group: Group, timeout: float) -> Session:
    """Runs an exchange with peer ("server" or an agent name); returns the session.

    A server address that is UNAVAILABLE (before or during the exchange) moves
    the whole exchange, from a fresh start, to the next address.
    """
    return client.failover(lambda endpoint: _initiate_on(endpoint, identity, peer, group, timeout))


def _initiate_on(
    endpoint: Endpoint, identity: AgentIdentity, peer: str, group: Group, timeout: float
) -> Session:
    now = datetime.now(UTC)
    if peer == "server":
        # The server is checked under the name this agent dialled.
        host, _ = parse_hostport(endpoint.target, what="server address")
        check = server_peer(_ca(identity), host, now)
    else:
        check = agent_peer(_ca(identity), _trust_domain(identity), peer, now, _revocation_check(endpoint))
    machine = Initiator(_local(identity), check, peer, group)
    stream = _Stream(endpoint.handshake.Exchange, timeout)
    try:
        stream.send(to_frame(machine.start()))
        init_auth = machine.receive(from_frame(stream.receive(endpoint, "the peer's answer")))
        assert init_auth is not None
        stream.send(to_frame(init_auth))
        machine.receive(from_frame(stream.receive(endpoint, "key confirmation")))
        # End the call cleanly rather than cancel it: the server records the exchange
        # only once its last frame is sent, and a call cancelled under a closing
        # channel has been seen to hang the process at exit.
        stream.wait_end(endpoint)
    finally:
        stream.close()
    session = machine.session
    assert session is not None
    return session


def respond_once(
    identity: AgentIdentity,
    client: KmsClient,
    timeout: float,
    accept_from: str | None = None,
    current: Callable[[], AgentIdentity] | None = None,
    idle: float = 0,
) -> Session:
    """Waits (without limit) for one incoming exchange, answers it, returns the session.

    Listens on the current server address; one that is UNAVAILABLE (or goes
    away while waiting) moves the wait to the next.

    Args:
        accept_from: if given, only this agent may complete an exchange.
        current: gives the agent's identity when the exchange arrives (a
            long-running agent renews while it waits); default: identity.
        idle: give up (DeadlineExceeded) if nothing arrives in this many seconds; 0 waits forever.
    """
    return client.failover(
        lambda endpoint: _respond_on(endpoint, identity, timeout, accept_from, current, idle)
    )


def _respond_on(
    endpoint: Endpoint,
    identity: AgentIdentity,
    timeout: float,
    accept_from: str | None,
    current: Callable[[], AgentIdentity] | None,
    idle: float,
) -> Session:
    ca, trust_domain, is_revoked = _ca(identity), _trust_domain(identity), _revocation_check(endpoint)

    def check(chain: tuple[bytes, ...]) -> PeerInfo:
        # The clock is read when the initiator's certificate arrives, not when listening began.
        return agent_peer(ca, trust_domain, accept_from, datetime.now(UTC), is_revoked)(chain)

    stream = _Stream(endpoint.handshake.Listen, timeout, first_timeout=idle)
    try:
        stream.send(Frame(listen=handshake_pb2.ListenStart()))
        hello = from_frame(stream.receive(endpoint, "an incoming exchange"))
        if not isinstance(hello, Hello):
            raise FailedPrecondition("expected a hello from the server")
        # Sign with the certificate we hold now, not the one we held when we started waiting.
        machine = Responder(_local((current or (lambda: identity))()), check, identity.settings.name)
        stream.send(to_frame(machine.receive(hello)))
        finished = machine.receive(from_frame(stream.receive(endpoint, "the initiator's authentication")))
        stream.send(to_frame(finished))
        stream.wait_end(endpoint)
    finally:
        stream.close()
    session = machine.session
    assert session is not None
    return session
