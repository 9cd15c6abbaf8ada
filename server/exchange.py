"""Key exchanges: the server as responder, and the rendezvous that relays agent to agent.

The relay moves opaque frames between two streams; the handshake's
signatures and MACs make any change it (or anyone) made fail on both ends.
Every step has a deadline, so a stalled exchange ends on both sides; when
one side fails, the other is told at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cryptography import x509

from kms.errors import DeadlineExceeded, FailedPrecondition, KmsError, NotFound
from kms.handshake import Hello, LocalIdentity, Responder
from kms.handshake_wire import from_frame, to_frame
from kms.identity import validate_agent_name
from kms.peers import AgentPeers
from kms.v1 import handshake_pb2
from server.audit import AuditBatcher
from server.authn import Caller
from server.clock import Clock
from server.revocation import RevocationService
from server.store import AuditEntry, Store

__all__ = ["ExchangeService"]

logger = logging.getLogger(__name__)

Frame = handshake_pb2.HandshakeFrame


@dataclass
class _Pairing:
    initiator: str
    to_responder: asyncio.Queue[Frame | KmsError] = field(default_factory=asyncio.Queue)
    to_initiator: asyncio.Queue[Frame | KmsError] = field(default_factory=asyncio.Queue)


class ExchangeService:
    def __init__(
        self,
        identity: Callable[[], LocalIdentity],
        ca_cert: x509.Certificate,
        trust_domain: str,
        audit: AuditBatcher,
        store: Store,
        revocations: RevocationService,
        clock: Clock,
        step_timeout: float,
    ) -> None:
        self._identity = identity
        self._audit = audit
        self._store = store
        self._revocations = revocations
        self._clock = clock
        self._timeout = step_timeout
        self._listening: dict[str, asyncio.Queue[_Pairing]] = {}
        self._peers = AgentPeers(ca_cert, trust_domain, revocations.is_revoked)

    async def _next(self, frames: AsyncIterator[Frame], what: str) -> Frame:
        try:
            async with asyncio.timeout(self._timeout):  # no task per step, unlike wait_for
                return await anext(frames)
        except TimeoutError:
            raise DeadlineExceeded(f"the handshake stalled waiting for {what}") from None
        except StopAsyncIteration:
            raise FailedPrecondition(f"the stream ended before {what}") from None

    async def _from(self, queue: asyncio.Queue[Frame | KmsError], what: str) -> Frame:
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
        yield to_frame(responder.receive(hello))
        finished = responder.receive(from_frame(await self._next(frames, "init_auth")))
        yield to_frame(finished)
        assert responder.session is not None
        # Batched, not awaited: the exchange writes nothing else (server/audit.py).
        self._audit.add(
            AuditEntry(
                int(self._clock().timestamp()),
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
        agent = await self._store.get_agent(peer)
        if agent is None:
            raise NotFound(f"no agent named {peer!r}")
        if agent.latest.revoked_at is not None:
            raise FailedPrecondition(f"agent {peer!r} is revoked: it cannot take part in an exchange")
        # Claiming the listener removes it: one initiator per Listen stream.
        waiting = self._listening.pop(peer, None)
        if waiting is None:
            raise FailedPrecondition(
                f"agent {peer!r} is not listening on this server: run `kms-agent listen` there (with several "
                "replicas, connected to the same replica as this agent), then retry"
            )
        pairing = _Pairing(caller.name)
        waiting.put_nowait(pairing)
        try:
            pairing.to_responder.put_nowait(to_frame(hello))
            yield await self._from(pairing.to_initiator, "resp_auth")
            pairing.to_responder.put_nowait(await self._next(frames, "init_auth"))
            yield await self._from(pairing.to_initiator, "finished")
            self._audit.add(
                AuditEntry(
                    int(self._clock().timestamp()),
                    f"agent:{caller.name}/{caller.serial}",
                    "exchange.relay",
                    f"agent:{peer}",
                )
            )
            # DEBUG, like an exchange with the server: the audit trail has every relay.
            logger.debug("relayed a key exchange", extra={"initiator": caller.name, "responder": peer})
        except BaseException as exc:  # including cancellation: the peer must not wait in vain
            reason = exc.message if isinstance(exc, KmsError) else "it disconnected"
            pairing.to_responder.put_nowait(FailedPrecondition(f"the initiator gave up: {reason}"))
            raise

    # --- the caller is a listener (responder) ----------------------------------------------

    async def listen(self, caller: Caller, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        first = await self._next(frames, "listen")
        if first.WhichOneof("frame") != "listen":
            raise FailedPrecondition("a Listen stream starts with listen")
        if caller.name in self._listening:
            raise FailedPrecondition(f"agent {caller.name!r} is already listening on another stream")
        waiting: asyncio.Queue[_Pairing] = asyncio.Queue(maxsize=1)
        self._listening[caller.name] = waiting
        try:
            pairing = await waiting.get()  # waits as long as the listener wants (revocation closes it)
        finally:
            if self._listening.get(caller.name) is waiting:
                del self._listening[caller.name]
        try:
            yield await self._from(pairing.to_responder, "hello")
            pairing.to_initiator.put_nowait(await self._next(frames, "resp_auth"))
            yield await self._from(pairing.to_responder, "init_auth")
            pairing.to_initiator.put_nowait(await self._next(frames, "finished"))
        except BaseException as exc:
            reason = exc.message if isinstance(exc, KmsError) else "it disconnected"
            pairing.to_initiator.put_nowait(FailedPrecondition(f"the responder gave up: {reason}"))
            raise
