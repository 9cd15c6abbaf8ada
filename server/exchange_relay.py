"""The Listen/Exchange relay across worker processes: the initiator on one worker, its listener on another.

Each worker tells the others which agents listen on it (a cast when a Listen
stream starts and when it ends, and its whole list to a worker that joins), so
every worker knows where each listener is without asking anyone. An agent
listens once: a second Listen is refused as in one process, and when two
workers admitted one each before hearing of the other, the later one ends
with the same error (ListenerDirectory). An Exchange
for an agent listening on another worker opens a relay there: one id per
exchange, chosen by the initiator's worker, and each frame or failure of either
side goes to the other worker over the supervisor's socket (``send_to``),
where the code that runs in one process handles it (server/exchange.py): the
listener's worker admits the attempt (one per initiator, ``WAITING_MAX``
waiting), the initiator's worker keeps the rate limit, its deadlines and the
audit record. A worker that goes away (the hub says so: ``worker.left``, or
``worker.joined`` for a restarted one) fails at once every relay it took part
in, on the other side, as a peer that disconnects does in one process.

Messages on ``exchange.relay``, by kind: ``open`` (initiator to listener's
worker: the hello), ``to_responder`` and ``end`` (from the initiator's worker),
``to_initiator`` (from the listener's worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from kms.errors import FailedPrecondition, KmsError
from server.exchange_pairing import Frame, Item, Listener, Pairing, RelayedPairing, decode_item, encode_item
from server.workers.hub import WORKER_JOINED, WORKER_LEFT
from server.workers.link import WorkerLink
from server.workers.protocol import Message

__all__ = ["SUPERSEDE_GRACE", "Claim", "ExchangeRelay", "ListenerDirectory"]

logger = logging.getLogger(__name__)

LISTENING = "exchange.listening"  # one listener started (on=True) or ended, on the sender
LISTENERS = "exchange.listeners"  # the sender's whole list, to a worker that joined
RELAY = "exchange.relay"
# Listeners per message of a whole list: an entry is at most ~110 bytes of JSON (a 63-character
# name, a 40-digit serial), so a message stays far below the socket's 16 MiB frames however many
# agents listen.
_LIST_CHUNK = 2000

# What the surviving side hears when the other side's worker is gone: what a peer that
# disconnects causes in one process.
_RESPONDER_GONE = "the responder gave up: it disconnected"
_INITIATOR_GONE = "the initiator gave up: it disconnected"
# How long a Listen that lost to an earlier one of the same agent on another worker stays
# open: if the earlier one's end is on its way (it ended as this one started), this one stands.
SUPERSEDE_GRACE = 0.2


class Claim(NamedTuple):
    """A Listen of an agent on a worker: ordered by when it started, then by worker."""

    since: int  # time.monotonic_ns() when the Listen was admitted
    worker: int
    serial: str


class ListenerDirectory:
    """Which other worker each agent listens on, and with which certificate, from their notes.

    Notes from one worker arrive in the order it sent them; notes of different workers
    may cross, so each worker's note is kept apart and its "ended" removes only its own.
    Two workers may each admit a Listen of one agent before hearing of the other's (an
    agent may listen once): the earlier claim, by when it started (CLOCK_MONOTONIC, one
    clock for every process of a host), is the listener, and the later one is ended by
    its own worker (ExchangeRelay._outranked).
    """

    def __init__(self) -> None:
        self._claims: dict[str, dict[int, Claim]] = {}

    def started(self, index: int, name: str, serial: str, since: int) -> None:
        self._claims.setdefault(name, {})[index] = Claim(since, index, serial)

    def ended(self, index: int, name: str) -> None:
        claims = self._claims.get(name, {})
        claims.pop(index, None)
        if not claims:
            self._claims.pop(name, None)

    def replace(self, index: int, listeners: Iterable[tuple[str, str, int]], *, first: bool = True) -> None:
        """Worker index's whole list, told when this worker joined (in parts: first, then the others)."""
        if first:
            self.forget(index)
        for name, serial, since in listeners:
            self.started(index, name, serial, since)

    def forget(self, index: int) -> None:
        """Worker index is gone: none of its listeners are there any more."""
        for name in [n for n, claims in self._claims.items() if index in claims]:
            self.ended(index, name)

    def claim(self, name: str) -> Claim | None:
        """The earliest claim of agent name elsewhere: the one that stands."""
        claims = self._claims.get(name)
        return min(claims.values()) if claims else None

    def find(self, name: str) -> tuple[int, str] | None:
        """(worker index, certificate serial) of agent name's listener elsewhere, or None."""
        claim = self.claim(name)
        return (claim.worker, claim.serial) if claim is not None else None


@dataclass(eq=False)
class _Incoming:
    """A relay on the listener's worker: the pairing in its listener's queue."""

    pairing: RelayedPairing
    listener: Listener


class ExchangeRelay:
    """Args:
    link: this worker's link to the others.
    admit: queues a pairing for the agent listening here by that name; returns its Listener
        (raises the KmsError one process answers an initiator with).
    listening: the agents listening on this worker, by name (read only).
    supersede: ends the Listen of the agent by that name on this worker, which another
        worker's earlier Listen of it outranks (ListenerDirectory).
    """

    def __init__(
        self,
        link: WorkerLink,
        admit: Callable[[str, Pairing], Listener],
        listening: Mapping[str, Listener],
        supersede: Callable[[str, Listener], None],
    ) -> None:
        self._link = link
        self._admit = admit
        self._listening = listening
        self._supersede = supersede
        self.directory = ListenerDirectory()
        self._next_id = 0
        self._out: dict[int, tuple[int, RelayedPairing]] = {}  # by relay id: (listener's worker, pairing)
        self._in: dict[tuple[int, int], _Incoming] = {}  # by (initiator's worker, relay id)
        for topic, handler in (
            (LISTENING, self._on_listening),
            (LISTENERS, self._on_listeners),
            (RELAY, self._on_relay),
            (WORKER_JOINED, self._on_joined),
            (WORKER_LEFT, self._on_left),
        ):
            link.on_cast(topic, _guarded(handler))

    @property
    def relays(self) -> int:
        """Relays under way through this worker, either side (0 once everything is cleaned up)."""
        return len(self._out) + len(self._in)

    # --- agents listening on this worker ------------------------------------------------

    def started(self, name: str, listener: Listener) -> None:
        self._link.cast(LISTENING, name=name, serial=listener.serial, since=listener.since, on=True)

    def ended(self, name: str) -> None:
        self._link.cast(LISTENING, name=name, on=False)

    def _on_listening(self, message: Message) -> None:
        name = str(message["name"])
        if not message.get("on"):
            self.directory.ended(int(message["from"]), name)
            return
        self.directory.started(int(message["from"]), name, str(message["serial"]), int(message["since"]))
        if name in self._listening:  # both workers admitted a Listen of name: the later one ends
            asyncio.get_running_loop().call_later(SUPERSEDE_GRACE, self._outranked, name)

    def _outranked(self, name: str) -> None:
        """Ends this worker's Listen of name if an earlier one elsewhere still stands."""
        local, other = self._listening.get(name), self.directory.claim(name)
        if local is None or other is None:
            return
        if other < Claim(local.since, self._link.role.index, local.serial):
            self._supersede(name, local)

    def _on_listeners(self, message: Message) -> None:
        listeners = [(str(name), str(serial), int(since)) for name, serial, since in message["listeners"]]
        self.directory.replace(int(message["from"]), listeners, first=bool(message["first"]))

    # --- the initiator's side -------------------------------------------------------------

    def open(self, index: int, initiator: str, listener: str, hello: Frame) -> Pairing:
        """The initiator's pairing with listener, on worker index (close it when done)."""
        self._next_id += 1
        relay_id = self._next_id

        def send(item: Item) -> None:
            self._link.send_to(index, RELAY, kind="to_responder", id=relay_id, **encode_item(item))

        opening = encode_item(hello)  # first: a hello too large to relay registers nothing
        pairing = RelayedPairing(initiator, hello, side="initiator", send=send, relay_id=relay_id)
        self._out[relay_id] = (index, pairing)
        self._link.send_to(
            index, RELAY, kind="open", id=relay_id, initiator=initiator, listener=listener, **opening
        )
        return pairing

    def close(self, pairing: Pairing) -> None:
        """The initiator is done with pairing (it succeeded, or told the responder why not)."""
        assert isinstance(pairing, RelayedPairing)
        out = self._out.pop(pairing.relay_id, None)
        if out is not None:
            self._link.send_to(out[0], RELAY, kind="end", id=pairing.relay_id)

    # --- messages of relays ----------------------------------------------------------------

    def _on_relay(self, message: Message) -> None:
        sender, kind, relay_id = int(message["from"]), str(message["kind"]), int(message["id"])
        if kind == "to_initiator":
            out = self._out.get(relay_id)
            if out is not None and out[0] == sender:
                out[1].to_initiator.put_nowait(decode_item(message))
        elif kind == "open":
            self._opened(sender, relay_id, message)
        elif kind == "to_responder":
            incoming = self._in.get((sender, relay_id))
            if incoming is not None:
                item = decode_item(message)
                if isinstance(item, KmsError):
                    incoming.pairing.abandoned = True
                incoming.pairing.to_responder.put_nowait(item)
        elif kind == "end":
            incoming = self._in.pop((sender, relay_id), None)
            if incoming is not None:
                self._release(incoming)

    def _opened(self, sender: int, relay_id: int, message: Message) -> None:
        def send(item: Item) -> None:
            self._link.send_to(sender, RELAY, kind="to_initiator", id=relay_id, **encode_item(item))

        hello = decode_item(message)
        if isinstance(hello, KmsError):
            raise ValueError("a relay opened without a hello")
        pairing = RelayedPairing(str(message["initiator"]), hello, side="responder", send=send)
        try:
            listener = self._admit(str(message["listener"]), pairing)
        except KmsError as refused:  # not listening here, or too many waiting: the initiator is told
            send(refused)
            return
        self._in[(sender, relay_id)] = _Incoming(pairing, listener)

    @staticmethod
    def _release(incoming: _Incoming) -> None:
        """The initiator is done: a listener that has not taken the attempt yet skips it."""
        incoming.pairing.abandoned = True
        incoming.listener.initiators.discard(incoming.pairing.initiator)

    # --- workers joining and leaving --------------------------------------------------------

    def _on_joined(self, message: Message) -> None:
        index = int(message["from"])
        self._gone(index)  # a worker that joins again is a new process: the old one's relays are over
        listeners = [[name, li.serial, li.since] for name, li in self._listening.items()]
        for start in range(0, max(len(listeners), 1), _LIST_CHUNK):
            part = listeners[start : start + _LIST_CHUNK]
            self._link.send_to(index, LISTENERS, listeners=part, first=start == 0)

    def _on_left(self, message: Message) -> None:
        self._gone(int(message["from"]))

    def _gone(self, index: int) -> None:
        self.directory.forget(index)
        for _, pairing in [out for out in self._out.values() if out[0] == index]:
            pairing.to_initiator.put_nowait(FailedPrecondition(_RESPONDER_GONE))
        for key in [key for key in self._in if key[0] == index]:
            incoming = self._in.pop(key)
            incoming.pairing.to_responder.put_nowait(FailedPrecondition(_INITIATOR_GONE))
            self._release(incoming)


def _guarded(handler: Callable[[Message], None]) -> Callable[[Message], None]:
    """handler, logging a malformed message instead of ending the link's reader."""

    def guarded(message: Message) -> None:
        try:
            handler(message)
        except Exception:  # one confused message costs one relay, never the worker's link
            logger.exception("dropped a malformed message from worker %s", message.get("from"))

    return guarded
