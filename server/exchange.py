"""Key exchanges: the server as responder, and the rendezvous that relays agent to agent.

The relay moves opaque frames between two streams; the handshake's
signatures and MACs make any change it (or anyone) made fail on both ends.
Every step has a deadline, so a stalled exchange ends on both sides; when
one side fails, the other is told at once. When the two agents are on
different worker processes (``--workers N``), the pairing's other side is on
the other worker, reached through server/exchange_relay.py: the code here is
the same on both sides.

What one agent can do to others through here is bounded:

- each agent starts at most ``rate`` exchanges a second (a burst of as many);
- the server's finite-field Diffie-Hellman (RFC 7919 groups, milliseconds of
  CPU each) runs on a worker thread, never on the event loop;
- ``responder=NAME`` gets one answer for an unknown, a revoked and a
  not-listening agent, so names and revocations cannot be probed;
- a listener keeps its place across failed attempts: a bogus hello, a
  refused initiator or one that goes away costs the listener one aborted
  attempt (an ``abort`` frame) on the same Listen stream, and the stream
  ends only after an exchange completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from cryptography import x509

from kms.errors import DeadlineExceeded, FailedPrecondition, KmsError, ResourceExhausted
from kms.handshake import Hello, LocalIdentity, Responder
from kms.handshake_wire import from_frame, to_frame
from kms.identity import validate_agent_name
from kms.peers import AgentPeers
from kms.v1 import handshake_pb2
from server.audit.trail import AuditBatcher
from server.clock import Clock, now_seconds
from server.endpoints.authn import Caller
from server.endpoints.limits import RateLimiter
from server.exchange_pairing import WAITING_MAX, Frame, Item, Listener, Pairing, not_listening
from server.exchange_relay import ExchangeRelay
from server.revocation.service import RevocationService
from server.store import AuditEntry
from server.workers.link import WorkerLink

__all__ = ["ExchangeService"]

logger = logging.getLogger(__name__)

# RFC 7919 groups: milliseconds of modular arithmetic per exchange (ffdhe3072: about 4), kept off the event loop.
_SLOW_GROUPS = frozenset({"ffdhe2048", "ffdhe3072"})
# Finite-field answers are computed one at a time, on one thread: its modular arithmetic holds
# the GIL (two threads would not run it in parallel), and kms/groups.py silences cryptography's
# FFDH deprecation warning with warnings.catch_warnings, which is process-wide, not thread-safe.
_CRYPTO_THREADS = 1
# How long a relayed initiator may take to send init_auth once it has the listener's answer:
# it holds the listener meanwhile, and it needs no input to compute it (a few milliseconds).
_INIT_AUTH_SECONDS = 3.0


def _already_listening(name: str) -> FailedPrecondition:
    return FailedPrecondition(f"agent {name!r} is already listening on another stream")


def _kind(frame: Frame) -> str:
    return frame.WhichOneof("frame") or "an empty frame"


class ExchangeService:
    def __init__(
        self,
        identity: Callable[[], LocalIdentity],
        ca_cert: x509.Certificate,
        trust_domain: str,
        audit: AuditBatcher,
        revocations: RevocationService,
        clock: Clock,
        step_timeout: float,
        rate: int,
    ) -> None:
        self._identity = identity
        self._audit = audit
        self._revocations = revocations
        self._clock = clock
        self._timeout = step_timeout
        self._rate = rate
        self.limiter = RateLimiter(rate * 60, burst=rate)  # shared by workers: server/workers/shared.py
        self._listening: dict[str, Listener] = {}
        self._peers = AgentPeers([ca_cert], trust_domain, revocations.is_revoked)
        self._crypto = ThreadPoolExecutor(max_workers=_CRYPTO_THREADS, thread_name_prefix="handshake")
        # Listeners on the other workers, and the relays to them (None: the server is one process).
        self._relay: ExchangeRelay | None = None

    def relay_through(self, link: WorkerLink) -> None:
        """As one worker of several: agents listening on the others are reached through link."""
        self._relay = ExchangeRelay(link, self._admit, self._listening, self._supersede)

    def trust(self, roots: Sequence[x509.Certificate]) -> None:
        """Accepts agents of these CAs from now on (server/ca/trust.py: every generation not retired)."""
        self._peers.trust(roots)

    def close(self) -> None:
        """Lets the crypto threads go (work they have started finishes; nothing new starts)."""
        self._crypto.shutdown(wait=False, cancel_futures=True)

    async def _next(self, frames: AsyncIterator[Frame], what: str, timeout: float | None = None) -> Frame:
        try:
            # No task per step, unlike wait_for.
            async with asyncio.timeout(self._timeout if timeout is None else timeout):
                return await anext(frames)
        except TimeoutError:
            raise DeadlineExceeded(f"the handshake stalled waiting for {what}") from None
        except StopAsyncIteration:
            raise FailedPrecondition(f"the stream ended before {what}") from None

    async def _from(self, queue: asyncio.Queue[Item], what: str) -> Frame:
        try:
            async with asyncio.timeout(self._timeout):
                item = await queue.get()
        except TimeoutError:
            raise DeadlineExceeded(f"the handshake stalled waiting for {what} from the peer") from None
        if isinstance(item, KmsError):
            raise item
        return item

    # --- the caller is the initiator ---------------------------------------------------

    async def exchange(self, caller: Caller, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        wait = self.limiter.take(caller.name)
        if wait:
            raise ResourceExhausted(
                f"agent {caller.name!r} starts at most {self._rate} key exchanges a second: "
                f"retry in {max(wait, 0.1):.1f}s"
            )
        hello = from_frame(await self._next(frames, "hello"))
        if not isinstance(hello, Hello):
            raise FailedPrecondition("an exchange starts with hello")
        if hello.responder == "server":
            async for out in self._answer(hello, frames):
                yield out
            return
        async for out in self._relay_as_initiator(caller, hello, frames):
            yield out

    async def _answer(self, hello: Hello, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        """The server's own side: nothing secret outlives this generator."""
        check = self._peers.at(self._clock())
        responder = Responder(self._identity(), check, "server")  # the current (rotating) TLS identity
        if hello.group in _SLOW_GROUPS:
            # Its own thread: the event loop keeps serving everyone else meanwhile.
            answer = await asyncio.get_running_loop().run_in_executor(self._crypto, responder.receive, hello)
        else:
            answer = responder.receive(hello)  # X25519 and P-256: well under a millisecond
        yield to_frame(answer)
        finished = responder.receive(from_frame(await self._next(frames, "init_auth")))
        yield to_frame(finished)
        assert responder.session is not None
        # Batched, not awaited: the exchange writes nothing else (server/audit/trail.py).
        self._audit.add(
            AuditEntry(
                now_seconds(self._clock),
                f"agent:{responder.session.peer.name}/{responder.session.peer.serial}",
                "exchange",
                f"server session:{responder.session.session_id}",
            )
        )
        # DEBUG, like each key release: the audit trail has every exchange.
        logger.debug(
            "key exchange with server",
            extra={"agent": responder.session.peer.name, "session": responder.session.session_id},
        )

    async def _relay_as_initiator(
        self, caller: Caller, hello: Hello, frames: AsyncIterator[Frame]
    ) -> AsyncIterator[Frame]:
        peer = validate_agent_name(hello.responder)
        pairing, done = self._pair(caller.name, peer, to_frame(hello))
        try:
            yield await self._from(pairing.to_initiator, "resp_auth")
            init_auth = await self._next(frames, "init_auth", min(self._timeout, _INIT_AUTH_SECONDS))
            if _kind(init_auth) != "init_auth":
                raise FailedPrecondition(f"an exchange continues with init_auth, not {_kind(init_auth)}")
            pairing.tell_responder(init_auth)
            yield await self._from(pairing.to_initiator, "finished")
            self._audit.add(
                AuditEntry(
                    now_seconds(self._clock),
                    f"agent:{caller.name}/{caller.serial}",
                    "exchange.relay",
                    f"agent:{peer}",
                )
            )
            # DEBUG, like an exchange with the server: the audit trail has every relay.
            logger.debug("relayed a key exchange", extra={"initiator": caller.name, "responder": peer})
        except BaseException as exc:  # including cancellation: the peer must not wait in vain
            pairing.abandoned = True
            reason = exc.message if isinstance(exc, KmsError) else "it disconnected"
            pairing.tell_responder(FailedPrecondition(f"the initiator gave up: {reason}"))
            raise
        finally:
            done()

    def _pair(self, initiator: str, peer: str, hello: Frame) -> tuple[Pairing, Callable[[], None]]:
        """initiator's pairing with peer's listener, and what ends it once the initiator is done.

        Raises:
            FailedPrecondition, ResourceExhausted: as _admit (the listener on this worker).
        """
        elsewhere = self._elsewhere(peer)
        if elsewhere is None or self._relay is None:
            pairing = Pairing(initiator, hello)
            listener = self._admit(peer, pairing)
            return pairing, lambda: listener.initiators.discard(initiator)
        # On another worker, which admits it (or tells this one why not, as the first answer).
        relay = self._relay
        pairing = relay.open(elsewhere, initiator, peer, hello)
        return pairing, lambda: relay.close(pairing)

    def _elsewhere(self, peer: str) -> int | None:
        """The worker where agent peer listens, if not this one (and its certificate is not revoked)."""
        if self._relay is None or peer in self._listening:
            return None
        found = self._relay.directory.find(peer)
        if found is None or self._revocations.is_revoked(found[1]):
            return None
        return found[0]

    def _admit(self, peer: str, pairing: Pairing) -> Listener:
        """Queues pairing for agent peer listening on this worker; its Listener.

        Raises:
            FailedPrecondition: peer is not listening here (unknown, revoked or absent alike).
            ResourceExhausted: this initiator has an attempt with peer already, or too many wait.
        """
        listener = self._listening.get(peer)
        # The store is not asked: unknown, revoked and absent agents look the same from here.
        if listener is None or self._revocations.is_revoked(listener.serial):
            raise not_listening(peer)
        if pairing.initiator in listener.initiators:
            raise ResourceExhausted(
                f"an exchange of agent {pairing.initiator!r} with {peer!r} is already waiting or under way: "
                "finish it, then retry"
            )
        try:
            listener.waiting.put_nowait(pairing)
        except asyncio.QueueFull:
            raise ResourceExhausted(
                f"agent {peer!r} has {WAITING_MAX} exchanges waiting for it already: retry in a few seconds"
            ) from None
        listener.initiators.add(pairing.initiator)
        return listener

    # --- the caller is a listener (responder) ----------------------------------------------

    async def listen(self, caller: Caller, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        first = await self._next(frames, "listen")
        if first.WhichOneof("frame") != "listen":
            raise FailedPrecondition("a Listen stream starts with listen")
        if caller.name in self._listening or (self._relay and self._relay.directory.find(caller.name)):
            raise _already_listening(caller.name)
        listener = Listener(caller.serial)
        self._listening[caller.name] = listener
        if self._relay is not None:
            self._relay.started(caller.name, listener)
        try:
            while True:
                if listener.superseded is not None:
                    raise listener.superseded
                # Waits as long as the listener wants (revocation closes the stream).
                pairing = await listener.waiting.get()
                if pairing.abandoned:
                    continue
                try:
                    yield pairing.hello
                    answer = await self._next(frames, "resp_auth")
                    if self._refused(answer, "resp_auth", pairing, caller.name):
                        continue
                    pairing.tell_initiator(answer)
                    from_initiator = await self._initiator_step(pairing)
                    if isinstance(from_initiator, KmsError):
                        yield Frame(abort=handshake_pb2.Abort(reason=from_initiator.message))
                        continue
                    yield from_initiator
                    answer = await self._next(frames, "finished")
                    if self._refused(answer, "finished", pairing, caller.name):
                        continue
                    pairing.tell_initiator(answer)
                    return  # one genuine exchange: the Listen stream ends
                except BaseException as exc:  # the listener failed or went: tell the initiator now
                    reason = exc.message if isinstance(exc, KmsError) else "it disconnected"
                    pairing.tell_initiator(FailedPrecondition(f"the responder gave up: {reason}"))
                    raise
        finally:
            if self._listening.get(caller.name) is listener:
                del self._listening[caller.name]
                if self._relay is not None:
                    self._relay.ended(caller.name)
            while not listener.waiting.empty():
                listener.waiting.get_nowait().tell_initiator(not_listening(caller.name))

    def _supersede(self, name: str, listener: Listener) -> None:
        """Ends a Listen of name that another worker's earlier one outranks (server/exchange_relay.py)
        as a second Listen on one worker is refused; an exchange under way through it finishes."""
        if self._listening.get(name) is not listener or listener.superseded is not None:
            return
        listener.superseded = _already_listening(name)
        wake = Pairing("", Frame())
        wake.abandoned = True  # skipped by the Listen loop, which then ends
        with contextlib.suppress(asyncio.QueueFull):  # full: the loop is not waiting, and checks first
            listener.waiting.put_nowait(wake)

    def _refused(self, answer: Frame, expected: str, pairing: Pairing, listener: str) -> bool:
        """True if the listener aborted this attempt (the initiator is told); raises on a wrong frame."""
        if _kind(answer) == "abort":
            logger.debug(
                "a listener refused an exchange", extra={"agent": listener, "initiator": pairing.initiator}
            )
            pairing.tell_initiator(
                FailedPrecondition(f"agent {listener!r} refused the exchange: its log says why")
            )
            return True
        if _kind(answer) != expected:
            raise FailedPrecondition(f"a listener answers with {expected} or abort, not {_kind(answer)}")
        return False

    async def _initiator_step(self, pairing: Pairing) -> Frame | KmsError:
        """The initiator's next frame, or why it has none (it gave up, or stalled)."""
        try:
            # Longer than the initiator is given: its own side times out first and says why.
            async with asyncio.timeout(min(self._timeout, _INIT_AUTH_SECONDS) + 1):
                item = await pairing.to_responder.get()
        except TimeoutError:
            item = DeadlineExceeded("the handshake stalled waiting for init_auth from the initiator")
        if isinstance(item, KmsError):
            pairing.abandoned = True
            pairing.tell_initiator(FailedPrecondition(f"the exchange was abandoned: {item.message}"))
        return item
