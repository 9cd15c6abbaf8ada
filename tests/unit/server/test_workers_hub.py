"""The supervisor's hub between workers (server/workers/hub.py), driven over its real UNIX socket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from server.workers.hub import WORKER_JOINED, WORKER_LEFT, Hub
from server.workers.protocol import Message, read_message, write_message


class _Worker:
    """A worker's end, speaking the protocol by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def join(cls, hub: Hub, index: int, applied: int = 0) -> tuple[_Worker, Message]:
        reader, writer = await asyncio.open_unix_connection(str(hub.path))
        worker = cls(reader, writer)
        worker.send({"op": "hello", "index": index, "pid": 1000 + index, "applied": applied})
        return worker, await worker.next()

    def send(self, message: Message) -> None:
        write_message(self.writer, message)

    async def next(self, notes: bool = False) -> Message:
        """The next message (skipping the hub's notes of workers joining and leaving, unless notes)."""
        while True:
            message = await asyncio.wait_for(read_message(self.reader), 5)
            assert message is not None
            if notes or message.get("topic") not in (WORKER_JOINED, WORKER_LEFT):
                return message


def _run(tmp_path: Path, body: object) -> None:
    async def main() -> None:
        killed: list[int] = []

        async def kill(index: int) -> None:
            killed.append(index)
            await hub.gone(index)

        hub = Hub(tmp_path / "w.sock", kill, bound=0.3)
        await hub.start()
        try:
            await body(hub, killed)  # type: ignore[operator]
        finally:
            await hub.stop()

    asyncio.run(main())


def test_an_announced_event_is_confirmed_once_every_other_worker_applied_it(tmp_path: Path) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, welcome = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        assert welcome == {"op": "welcome", "seq": 0}
        a.send({"op": "announce", "seq": 7, "applied": 7})
        assert await b.next() == {"op": "wake", "seq": 7}
        b.send({"op": "applied", "seq": 6})  # not yet: no confirmation
        await asyncio.sleep(0.1)
        b.send({"op": "applied", "seq": 7})
        assert await a.next() == {"op": "confirmed", "seq": 7}
        assert killed == []
        c, welcome = await _Worker.join(hub, 2)  # a worker joining later reads up to 7 before serving
        assert welcome == {"op": "welcome", "seq": 7}

    _run(tmp_path, body)


def test_a_worker_that_does_not_apply_within_the_bound_is_killed_then_the_event_confirmed(
    tmp_path: Path,
) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, _ = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        started = time.monotonic()
        a.send({"op": "announce", "seq": 3, "applied": 3})
        assert await b.next() == {"op": "wake", "seq": 3}  # and b never answers
        # The others hear b left (they drop what it held open), then a has its confirmation.
        assert await a.next(notes=True) == {"op": "cast", "topic": WORKER_JOINED, "from": 1}
        assert await a.next(notes=True) == {"op": "cast", "topic": WORKER_LEFT, "from": 1}
        assert await a.next() == {"op": "confirmed", "seq": 3}
        assert killed == [1]
        assert 0.25 <= time.monotonic() - started < 2

    _run(tmp_path, body)


def test_casts_go_to_the_others_and_questions_gather_every_answer(tmp_path: Path) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, _ = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        c, _ = await _Worker.join(hub, 2)
        a.send({"op": "cast", "topic": "tls"})
        assert await b.next() == {"op": "cast", "topic": "tls", "from": 0}
        assert await c.next() == {"op": "cast", "topic": "tls", "from": 0}
        b.send({"op": "to", "index": 2, "topic": "hi", "n": 1})
        assert await c.next() == {"op": "cast", "index": 2, "topic": "hi", "n": 1, "from": 1}
        for worker in (b, c):
            worker.send({"op": "ready"})
        a.send({"op": "ask", "id": 5, "topic": "figures"})
        for worker, n in ((b, 10), (c, 20)):
            question = await worker.next()
            assert question["topic"] == "figures" and question["from"] == 0
            worker.send({"op": "answer", "id": question["id"], "body": {"n": n}})
        answers = await a.next()
        assert answers["op"] == "answers" and answers["id"] == 5
        said = sorted((x["from"], x["body"]["n"]) for x in answers["answers"])
        assert said == [(1, 10), (2, 20)]  # each answer with its worker's index

    _run(tmp_path, body)


def test_a_question_skips_workers_not_ready_and_waits_at_most_its_own_bound(tmp_path: Path) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, _ = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        c, _ = await _Worker.join(hub, 2)  # still starting: never asked
        b.send({"op": "ready"})
        started = time.monotonic()
        a.send({"op": "ask", "id": 6, "topic": "observe", "within": 0.2})
        assert (await b.next())["topic"] == "observe"  # and b is slow to answer
        answers = await a.next()
        assert answers == {"op": "answers", "id": 6, "answers": []}
        assert 0.15 <= time.monotonic() - started < 1.0  # not the hub's ASK_BOUND (2 s)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.next(), 0.1)
        assert killed == []

    _run(tmp_path, body)


def test_an_announce_does_not_count_as_having_read_what_another_worker_committed_before(
    tmp_path: Path,
) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, _ = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        b.send({"op": "announce", "seq": 9, "applied": 9})  # b revoked something: event 9
        assert await a.next() == {"op": "wake", "seq": 9}
        # Before a read the log, it committed event 10 itself: it has still not applied 9.
        a.send({"op": "announce", "seq": 10, "applied": 8})
        assert await a.next() == {"op": "wake", "seq": 10}  # woken for its own, to read 9 too
        assert await b.next() == {"op": "wake", "seq": 10}
        await asyncio.sleep(0.1)
        b.send({"op": "applied", "seq": 10})
        a.send({"op": "applied", "seq": 10})
        assert await b.next() == {"op": "confirmed", "seq": 9}  # only once a read up to 9
        assert await a.next() == {"op": "confirmed", "seq": 10}
        assert killed == []

    _run(tmp_path, body)


def test_a_worker_joining_during_a_confirmation_is_waited_for_not_killed(tmp_path: Path) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, _ = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        a.send({"op": "announce", "seq": 5, "applied": 5})
        assert await b.next() == {"op": "wake", "seq": 5}
        c, welcome = await _Worker.join(hub, 2, applied=3)  # built its state at 3, joins now
        assert welcome == {"op": "welcome", "seq": 5}
        c.send({"op": "applied", "seq": 5})  # read up to the welcome, as WorkerLink.connect does
        b.send({"op": "applied", "seq": 5})
        assert await a.next() == {"op": "confirmed", "seq": 5}
        assert killed == []

    _run(tmp_path, body)


def test_a_worker_whose_connection_ends_unasked_is_ended(tmp_path: Path) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, _ = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        b.writer.close()  # it may still serve, but hears of no revocation now
        for _ in range(50):
            if killed:
                break
            await asyncio.sleep(0.02)
        assert killed == [1]
        assert a.writer is not None  # a, still connected, is left alone

    _run(tmp_path, body)


def test_the_others_hear_of_a_worker_that_joins_and_of_one_that_leaves(tmp_path: Path) -> None:
    async def body(hub: Hub, killed: list[int]) -> None:
        a, _ = await _Worker.join(hub, 0)
        b, _ = await _Worker.join(hub, 1)
        assert await a.next(notes=True) == {"op": "cast", "topic": WORKER_JOINED, "from": 1}
        b.writer.close()  # its process died
        assert await a.next(notes=True) == {"op": "cast", "topic": WORKER_LEFT, "from": 1}
        b, _ = await _Worker.join(hub, 1)  # restarted
        assert await a.next(notes=True) == {"op": "cast", "topic": WORKER_JOINED, "from": 1}
        await hub.gone(0)  # the supervisor saw it exit
        assert await b.next(notes=True) == {"op": "cast", "topic": WORKER_LEFT, "from": 0}

    _run(tmp_path, body)
