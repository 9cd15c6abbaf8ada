"""The relay between workers (server/exchange_relay.py): where listeners are, and one exchange's items
going both ways, over an in-memory stand-in for the supervisor's hub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import DeadlineExceeded, FailedPrecondition, KmsError, ResourceExhausted
from kms.v1 import handshake_pb2
from server.exchange import ExchangeService
from server.exchange_pairing import (
    LARGEST_RELAYED,
    Frame,
    Item,
    Listener,
    Pairing,
    decode_item,
    encode_item,
    not_listening,
)
from server.exchange_relay import SUPERSEDE_GRACE, ExchangeRelay, ListenerDirectory
from server.workers.hub import WORKER_JOINED, WORKER_LEFT
from server.workers.protocol import MAX_FRAME
from tests.pki import foreign_ca_and_client


class _Hub:
    """Delivers each worker's casts to the others, and send_to to one, as the hub does (in order)."""

    def __init__(self) -> None:
        self.links: dict[int, _Link] = {}
        self.sizes: list[int] = []  # of each message, as JSON

    def deliver(self, sender: int, target: int | None, topic: str, body: dict[str, Any]) -> None:
        self.sizes.append(len(json.dumps(body)))
        for index, link in list(self.links.items()):
            if index != sender and target in (None, index):
                handler = link.handlers.get(topic)
                if handler is not None:
                    handler({"op": "cast", "topic": topic, **body, "from": sender})


class _Link:
    def __init__(self, hub: _Hub, index: int) -> None:
        self.hub, self.index = hub, index
        self.role = SimpleNamespace(index=index)
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        hub.links[index] = self

    def on_cast(self, topic: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self.handlers[topic] = handler

    def cast(self, topic: str, **body: Any) -> None:
        self.hub.deliver(self.index, None, topic, body)

    def send_to(self, index: int, topic: str, **body: Any) -> None:
        self.hub.deliver(self.index, index, topic, body)


class _Worker:
    """A worker's relay, with agents listening on it as the exchange service keeps them."""

    def __init__(self, hub: _Hub, index: int) -> None:
        self.listening: dict[str, Listener] = {}
        self.superseded: list[str] = []
        self.relay = ExchangeRelay(_Link(hub, index), self.admit, self.listening, self.supersede)  # type: ignore[arg-type]

    def supersede(self, name: str, listener: Listener) -> None:
        assert self.listening[name] is listener
        self.superseded.append(name)

    def admit(self, name: str, pairing: Pairing) -> Listener:
        listener = self.listening.get(name)
        if listener is None:
            raise not_listening(name)
        if pairing.initiator in listener.initiators:
            raise ResourceExhausted("already under way")
        listener.waiting.put_nowait(pairing)
        listener.initiators.add(pairing.initiator)
        return listener

    def listen(self, name: str, serial: str, since: int | None = None) -> Listener:
        self.listening[name] = listener = Listener(serial)
        if since is not None:
            listener.since = since
        self.relay.started(name, listener)
        return listener


def _frame(kind: str) -> Frame:
    return Frame(**{kind: getattr(handshake_pb2, kind.title().replace("_", ""))()})


def _hello() -> Frame:
    return Frame(hello=handshake_pb2.Hello(responder="b"))


def _now(queue: asyncio.Queue[Item]) -> Item:
    return queue.get_nowait()


def test_the_directory_keeps_each_workers_notes_even_when_notes_of_two_workers_cross() -> None:
    d = ListenerDirectory()
    d.started(1, "b", "s1", 100)
    d.started(0, "b", "s2", 200)  # b reconnected to worker 0 before worker 1's note of its end came
    d.ended(1, "b")
    assert d.find("b") == (0, "s2")
    d.replace(2, [("c", "s3", 300), ("e", "s4", 400)])
    d.forget(0)
    assert (d.find("b"), d.find("c"), d.find("e")) == (None, (2, "s3"), (2, "s4"))


@pytest.mark.parametrize(
    "item",
    [
        _hello(),
        FailedPrecondition("the initiator gave up: x"),
        ResourceExhausted("8 waiting"),
        DeadlineExceeded("slow"),
    ],
    ids=["frame", "failed-precondition", "resource-exhausted", "deadline"],
)
def test_an_item_crosses_as_json_and_comes_back_the_same(item: Item) -> None:
    back = decode_item(encode_item(item))
    if isinstance(item, KmsError):
        assert type(back) is type(item) and isinstance(back, KmsError) and back.message == item.message
    else:
        assert back == item


def test_a_frame_larger_than_any_genuine_one_is_refused_instead_of_crossing() -> None:
    huge = Frame(resp_auth=handshake_pb2.RespAuth(signature=b"x" * (LARGEST_RELAYED + 1)))
    with pytest.raises(FailedPrecondition, match="larger than any genuine"):
        encode_item(huge)


def test_a_hello_too_large_to_relay_is_refused_and_leaves_no_relay_behind() -> None:
    async def main() -> None:
        hub = _Hub()
        near, far = _Worker(hub, 0), _Worker(hub, 1)
        listener = far.listen("b", "s1")
        huge = Frame(hello=handshake_pb2.Hello(responder="b", share=b"x" * (LARGEST_RELAYED + 1)))
        with pytest.raises(FailedPrecondition, match="larger than any genuine"):
            near.relay.open(1, "a", "b", huge)
        assert near.relay.relays == far.relay.relays == 0 and listener.waiting.empty()

    asyncio.run(main())


def test_a_relayed_exchange_moves_every_item_both_ways_and_cleans_up() -> None:
    async def main() -> None:
        hub = _Hub()
        near, far = _Worker(hub, 0), _Worker(hub, 1)
        listener = far.listen("b", "s1")
        assert near.relay.directory.find("b") == (1, "s1")
        pairing = near.relay.open(1, "a", "b", _hello())
        theirs = listener.waiting.get_nowait()
        assert theirs.initiator == "a" and theirs.hello == _hello() and listener.initiators == {"a"}
        theirs.tell_initiator(_frame("resp_auth"))
        assert _now(pairing.to_initiator) == _frame("resp_auth")
        pairing.tell_responder(_frame("init_auth"))
        assert _now(theirs.to_responder) == _frame("init_auth")
        theirs.tell_initiator(_frame("finished"))
        assert _now(pairing.to_initiator) == _frame("finished")
        near.relay.close(pairing)
        assert listener.initiators == set() and near.relay.relays == far.relay.relays == 0

    asyncio.run(main())


def test_a_refused_attempt_gets_the_error_one_process_gives_and_a_gave_up_initiator_is_skipped() -> None:
    async def main() -> None:
        hub = _Hub()
        near, far = _Worker(hub, 0), _Worker(hub, 1)
        absent = near.relay.open(1, "a", "nobody", _hello())
        refused = _now(absent.to_initiator)
        assert isinstance(refused, FailedPrecondition) and refused.message == not_listening("nobody").message
        near.relay.close(absent)
        listener = far.listen("b", "s1")
        pairing = near.relay.open(1, "a", "b", _hello())
        pairing.tell_responder(FailedPrecondition("the initiator gave up: it disconnected"))
        near.relay.close(pairing)
        theirs = listener.waiting.get_nowait()
        assert theirs.abandoned and isinstance(_now(theirs.to_responder), FailedPrecondition)
        assert listener.initiators == set() and near.relay.relays == far.relay.relays == 0

    asyncio.run(main())


def test_a_worker_that_leaves_fails_its_relays_on_the_other_side_and_one_that_joins_learns_the_listeners() -> (
    None
):
    async def main() -> None:
        hub = _Hub()
        near, far = _Worker(hub, 0), _Worker(hub, 1)
        far.listen("b", "s1")
        mine = near.listen("c", "s2")
        outgoing = near.relay.open(1, "a", "b", _hello())
        far.relay.open(0, "d", "c", _hello())
        del hub.links[1]  # worker 1 is killed: the hub tells the others
        hub.deliver(1, None, WORKER_LEFT, {})
        gone = _now(outgoing.to_initiator)
        assert (
            isinstance(gone, FailedPrecondition) and gone.message == "the responder gave up: it disconnected"
        )
        theirs = mine.waiting.get_nowait()  # d's attempt, from the worker that is gone
        assert theirs.abandoned and mine.initiators == set()
        assert str(_now(theirs.to_responder)) == "the initiator gave up: it disconnected"
        assert near.relay.directory.find("b") is None
        near.relay.close(outgoing)
        assert near.relay.relays == 0

        for n in range(4999):  # however many listen, in messages the hub takes
            near.listening[f"x{n}"] = Listener(f"{n:040x}", since=10**18 + n)
        hub.sizes.clear()
        joining = _Worker(hub, 1)  # restarted: it learns who listens where
        hub.deliver(1, None, WORKER_JOINED, {})
        assert joining.relay.directory.find("c") == (0, "s2")
        assert joining.relay.directory.find("x4998") == (0, f"{4998:040x}")
        assert (
            len(hub.sizes) == 1 + 3 and max(hub.sizes) < MAX_FRAME // 4
        )  # the join, then the list in 3 parts

    asyncio.run(main())


class _HeldHub(_Hub):
    """A hub whose casts wait until released: two workers act before hearing of each other."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[int, int | None, str, dict[str, Any]]] = []

    def deliver(self, sender: int, target: int | None, topic: str, body: dict[str, Any]) -> None:
        self.held.append((sender, target, topic, body))

    def release(self, order: list[int]) -> None:
        """Delivers what was held, in the order of these positions."""
        held, self.held = self.held, []
        for i in order:
            super().deliver(*held[i])


@pytest.mark.parametrize("order", [[0, 1], [1, 0]], ids=["earlier-first", "later-first"])
def test_two_listens_of_one_agent_admitted_at_once_on_two_workers_leave_the_earlier_one(
    order: list[int],
) -> None:
    async def main() -> None:
        hub = _HeldHub()
        first, second, third = _Worker(hub, 1), _Worker(hub, 0), _Worker(hub, 2)
        first.listen("a", "s1", since=1_000)  # earlier, though on the higher-numbered worker
        second.listen("a", "s2", since=2_000)
        hub.release(order)  # each hears of the other's only now, in either order
        await asyncio.sleep(SUPERSEDE_GRACE + 0.1)
        assert (first.superseded, second.superseded) == ([], ["a"])
        assert third.relay.directory.find("a") == (1, "s1")
        assert second.relay.directory.find("a") == (1, "s1")  # where its initiators go from now on

    asyncio.run(main())


def test_a_listen_whose_rival_ended_meanwhile_stands() -> None:
    """The earlier Listen ended as the later one started: its end arrives within the grace."""

    async def main() -> None:
        hub = _HeldHub()
        first, second = _Worker(hub, 0), _Worker(hub, 1)
        first.listen("a", "s1", since=1_000)
        second.listen("a", "s2", since=2_000)
        del first.listening["a"]
        first.relay.ended("a")
        hub.release([0, 1, 2])
        await asyncio.sleep(SUPERSEDE_GRACE + 0.1)
        assert (first.superseded, second.superseded) == ([], [])
        assert first.relay.directory.find("a") == (1, "s2")

    asyncio.run(main())


def test_a_superseded_listen_stream_ends_with_the_error_of_a_second_listen(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """ExchangeService's side: the outranked Listen, waiting for an initiator, ends at once."""
    ca, _ = foreign_ca_and_client(rsa_key, "example.org", "b")
    revocations = SimpleNamespace(is_revoked=lambda serial: False)
    clock = lambda: datetime.now(UTC)  # noqa: E731
    service = ExchangeService(lambda: None, ca, "example.org", None, revocations, clock, 5.0, 10)  # type: ignore[arg-type]
    caller = SimpleNamespace(name="b", serial="s1")

    async def main() -> None:
        frames: asyncio.Queue[Frame] = asyncio.Queue()

        async def incoming() -> AsyncIterator[Frame]:
            while True:
                yield await frames.get()

        stream = service.listen(caller, incoming())  # type: ignore[arg-type]
        waiting = asyncio.ensure_future(anext(stream))
        frames.put_nowait(Frame(listen=handshake_pb2.ListenStart()))
        for _ in range(5):
            await asyncio.sleep(0)
        listener = service._listening["b"]
        service._supersede("b", listener)
        with pytest.raises(FailedPrecondition, match="agent 'b' is already listening on another stream"):
            await asyncio.wait_for(waiting, 1)
        assert "b" not in service._listening

    try:
        asyncio.run(main())
    finally:
        service.close()
