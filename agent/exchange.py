"""Key exchanges from the agent's side: initiate (with the server or an agent), or listen for one.

The agent runs kms.handshake's state machines and only moves frames over the
stream. Peer checks: the server is verified as the server of the pinned CA
for the configured host; an agent peer by chain, name, validity now, and a
revocation check asked of the server (which relays but cannot forge a peer's
signature).
"""

from __future__ import annotations

import queue
import time
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
from kms.errors import DeadlineExceeded, FailedPrecondition, KmsError, Revoked, Unavailable
from kms.groups import Group
from kms.handshake import Initiator, LocalIdentity, PeerInfo, Responder, Session
from kms.handshake_wire import from_frame, to_frame
from kms.peers import agent_peer, server_peer
from kms.v1 import handshake_pb2, revocation_pb2

__all__ = ["NoExchangeCame", "initiate", "respond_once"]

Frame = handshake_pb2.HandshakeFrame


def _local(identity: AgentIdentity) -> LocalIdentity:
    from cryptography.hazmat.primitives.serialization import Encoding

    return LocalIdentity(identity.key, (identity.cert.public_bytes(Encoding.DER),))


def _trust_domain(identity: AgentIdentity) -> str:
    return trust_domain_of(identity.settings.spiffe_id)


def _ca(identity: AgentIdentity) -> list[x509.Certificate]:
    return identity.roots


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

    def receive(
        self, endpoint: Endpoint, what: str, stalled: type[DeadlineExceeded] = DeadlineExceeded
    ) -> Frame:
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
                raise stalled(f"the handshake stalled waiting for {what}") from None
            raise endpoint.map_error(exc) from None
        if self._watchdog is not None:
            self._watchdog.reset()
        else:
            self._watchdog = Watchdog(self._timeout, self._call.cancel)
        return frame

    def wait_idle(self, seconds: float | None) -> None:
        """The next receive waits for a new exchange: up to seconds (None: without limit)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = Watchdog(seconds, self._call.cancel) if seconds else None

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
    endpoint.follow_connection()
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


class _AttemptFailed(Exception):
    """An incoming exchange failed after its hello arrived, and took its Listen stream with it."""

    def __init__(self, error: KmsError) -> None:
        super().__init__(error.message)
        self.error = error


def respond_once(
    identity: AgentIdentity,
    client: KmsClient,
    timeout: float,
    accept_from: str | None = None,
    current: Callable[[], AgentIdentity] | None = None,
    idle: float = 0,
    on_failed: Callable[[KmsError], object] | None = None,
) -> Session:
    """Waits (without limit) for one incoming exchange that completes, answers it, returns the session.

    Listens on the current server address; one that is UNAVAILABLE (or goes
    away while waiting) moves the wait to the next. An attempt that fails
    (a bogus or refused hello or authentication, an initiator that gives up
    or stalls, a stream cut mid-way) is reported to on_failed and does not
    count: the wait goes on, on the same Listen stream when the server kept
    it, else on a new one. So no other agent can use up a listener's one
    exchange, nor push it off the server.

    Args:
        accept_from: if given, only this agent may complete an exchange.
        current: gives the agent's identity when the exchange arrives (a
            long-running agent renews while it waits); default: identity.
        idle: give up (DeadlineExceeded) if no exchange completes in this many seconds; 0 waits forever.
        on_failed: told of each failed attempt (the listener's own revocation is raised instead).
    """
    deadline = time.monotonic() + idle if idle else None
    while True:
        try:
            return client.failover(
                lambda endpoint: _respond_on(
                    endpoint, identity, timeout, accept_from, current, deadline, on_failed or _ignore
                )
            )
        except _AttemptFailed as failed:
            (on_failed or _ignore)(failed.error)


class NoExchangeCame(DeadlineExceeded):
    """Nobody opened an exchange while we listened (not a failed one): the listener may simply listen again."""


def _ignore(error: KmsError) -> None:
    return None


def _left(deadline: float | None) -> float | None:
    """Seconds left until deadline (None: no deadline); DeadlineExceeded once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise NoExchangeCame("the handshake stalled waiting for an incoming exchange")
    return left


def _abort(reason: str) -> Frame:
    return Frame(abort=handshake_pb2.Abort(reason=reason[:200]))


def _respond_on(
    endpoint: Endpoint,
    identity: AgentIdentity,
    timeout: float,
    accept_from: str | None,
    current: Callable[[], AgentIdentity] | None,
    deadline: float | None,
    on_failed: Callable[[KmsError], object],
) -> Session:
    ca, trust_domain, is_revoked = _ca(identity), _trust_domain(identity), _revocation_check(endpoint)

    def check(chain: tuple[bytes, ...]) -> PeerInfo:
        # The clock is read when the initiator's certificate arrives, not when listening began.
        return agent_peer(ca, trust_domain, accept_from, datetime.now(UTC), is_revoked)(chain)

    def responder() -> Responder:
        # Sign with the certificate we hold now, not the one we held when we started waiting.
        return Responder(_local((current or (lambda: identity))()), check, identity.settings.name)

    endpoint.follow_connection()
    stream = _Stream(endpoint.handshake.Listen, timeout, first_timeout=_left(deadline) or 0)
    began = False
    try:
        stream.send(Frame(listen=handshake_pb2.ListenStart()))
        while True:
            frame = stream.receive(endpoint, "an incoming exchange", NoExchangeCame)
            began = True
            try:
                return _answer(stream, endpoint, responder, frame)
            except _Refused as refused:  # that attempt failed; the Listen stream goes on
                on_failed(refused.error)
                stream.wait_idle(_left(deadline))
    except (Revoked, Unavailable):
        raise
    except KmsError as exc:
        if began:  # an attempt was under way: it failed, the listener did not
            raise _AttemptFailed(exc) from None
        raise
    finally:
        stream.close()


class _Refused(Exception):
    """An incoming exchange refused or abandoned on a Listen stream that stays open."""

    def __init__(self, error: KmsError) -> None:
        super().__init__(error.message)
        self.error = error


def _answer(stream: _Stream, endpoint: Endpoint, responder: Callable[[], Responder], hello: Frame) -> Session:
    """Answers one incoming exchange, from its hello to the end of the call.

    Raises:
        _Refused: this listener refused the exchange (it told the server so), or the initiator gave up.
    """
    if hello.WhichOneof("frame") != "hello":
        raise FailedPrecondition("expected a hello from the server")
    machine = responder()
    try:
        answer = machine.receive(from_frame(hello))
    except KmsError as exc:  # a hello this listener will not answer: refuse it, keep listening
        stream.send(_abort(exc.message))
        raise _Refused(exc) from None
    stream.send(to_frame(answer))
    frame = stream.receive(endpoint, "the initiator's authentication")
    if frame.WhichOneof("frame") == "abort":  # the initiator gave up: keep listening
        raise _Refused(FailedPrecondition(f"the exchange was abandoned: {frame.abort.reason}"))
    try:
        finished = machine.receive(from_frame(frame))
    except (Revoked, Unavailable):
        raise
    except KmsError as exc:  # refused (not the agent expected, revoked, bad signature or MAC)
        stream.send(_abort(exc.message))
        raise _Refused(exc) from None
    stream.send(to_frame(finished))
    stream.wait_end(endpoint)
    session = machine.session
    assert session is not None
    return session
