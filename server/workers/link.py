"""A worker's end of the supervisor's socket (server/workers/hub.py).

It tells the hub of every event this worker commits, answers wake-ups by
reading the log (the EventFollower), and holds back the answer of a call that
committed an event until every worker applied it (``settle``). The link is
the worker's life line: once the supervisor is gone, the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kms.errors import Unavailable
from server.revocation.follower import EventFollower
from server.store import RevocationEvent
from server.workers.protocol import Message, read_message, write_message

__all__ = ["WorkerLink", "WorkerRole"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The longest a call waits for its events to be confirmed (the hub's bound is 1 s, plus a kill).
SETTLE_TIMEOUT = 15.0

# The events the unary call in progress committed: the newest seq, in a list the call's task
# holds (server/endpoints/chain.py begins it, link.committed raises it).
_this_call: ContextVar[list[int] | None] = ContextVar("worker_call_commits", default=None)


@dataclass(frozen=True)
class WorkerRole:
    """Which worker this process is (0: the primary, which also serves the admin socket, the HTTP
    side port and the server-wide timers), and where its supervisor listens."""

    index: int
    hub: Path

    @property
    def primary(self) -> bool:
        return self.index == 0


class WorkerLink:
    def __init__(self, role: WorkerRole) -> None:
        self.role = role
        self._follower: EventFollower | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._local = 0  # the newest seq this worker committed
        self._announced = 0
        self._confirmed = 0
        self._confirmations: dict[int, list[asyncio.Future[None]]] = {}
        self._handlers: dict[str, list[Callable[[Message], None]]] = {}
        self._questions: dict[str, Callable[[Message], Awaitable[Any]]] = {}
        self._asked: dict[int, asyncio.Future[list[Any]]] = {}
        self._next_ask = 0
        self._lost = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references

    # --- joining ------------------------------------------------------------------

    def follow(self, follower: EventFollower) -> None:
        """The follower that reads the log on wake-ups (built with the services, after the link)."""
        self._follower = follower

    @property
    def follower(self) -> EventFollower:
        if self._follower is None:
            raise RuntimeError("the worker link has no event follower yet")
        return self._follower

    async def connect(self) -> None:
        """Joins the hub and reads the log up to what any worker announced, before serving."""
        reader, self._writer = await asyncio.open_unix_connection(str(self.role.hub))
        self._send(
            {"op": "hello", "index": self.role.index, "pid": os.getpid(), "applied": self.follower.applied}
        )
        welcome = await read_message(reader)
        if welcome is None or welcome["op"] != "welcome":
            raise Unavailable("the supervisor closed its socket: this worker stops")
        await self.follower.catch_up_to(int(welcome["seq"]))
        # Told at once: a confirmation pending since before the welcome waits for this worker too.
        self._send({"op": "applied", "seq": self.follower.applied})
        self._reader = reader

    def ready(self, **details: Any) -> None:
        self._send({"op": "ready", **details})

    async def run(self) -> None:
        """Serves the hub's messages until the supervisor goes away (then returns)."""
        assert self._reader is not None, "connect first"
        try:
            while (message := await read_message(self._reader)) is not None:
                self._dispatch(message)
        except (ConnectionError, ValueError) as exc:
            logger.error("lost the supervisor's socket: %s", exc)
        finally:
            self._lost.set()
            for asked in self._asked.values():
                if not asked.done():
                    asked.set_result([])
            self._asked.clear()
            for waiters in self._confirmations.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(_unconfirmed())
            self._confirmations.clear()

    def _dispatch(self, message: Message) -> None:
        op = message["op"]
        if op == "wake":
            self._spawn(self._wake(int(message["seq"])))
        elif op == "confirmed":
            self._confirm(int(message["seq"]))
        elif op == "cast":
            for handler in self._handlers.get(str(message.get("topic")), ()):
                try:
                    handler(message)
                except Exception:  # one bad note loses that note, never the worker's life line
                    logger.exception(
                        "could not apply another worker's note", extra={"topic": message.get("topic")}
                    )
        elif op == "ask":
            self._spawn(self._answer(message))
        elif op == "answers":
            waiter = self._asked.pop(int(message["id"]), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(list(message["answers"]))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake(self, seq: int) -> None:
        try:
            await self.follower.catch_up_to(seq)
        except Exception:  # the hub's bound then restarts this worker: it reads the store afresh
            logger.exception("could not read the event log after a wake-up")
            return
        self._send({"op": "applied", "seq": self.follower.applied})

    # --- casts between workers ----------------------------------------------------------

    def on_cast(self, topic: str, handler: Callable[[Message], None]) -> None:
        """handler gets each message another worker casts on topic (with any other handlers of it)."""
        self._handlers.setdefault(topic, []).append(handler)

    def cast(self, topic: str, **body: Any) -> None:
        """To every other worker (each gets it with "from": this worker's index)."""
        self._send({"op": "cast", "topic": topic, **body})

    def send_to(self, index: int, topic: str, **body: Any) -> None:
        """To worker index only (it gets it as a cast)."""
        self._send({"op": "to", "index": index, "topic": topic, **body})

    def on_ask(self, topic: str, answer: Callable[[Message], Awaitable[Any]]) -> None:
        """answer makes this worker's reply (JSON-able) to each question on topic."""
        self._questions[topic] = answer

    async def ask(self, topic: str, *, within: float | None = None, **body: Any) -> list[Any]:
        """Every other ready worker's answer on topic, as {"from": its index, "body": its answer
        (None: it could not say)}, of those that answered within the hub's ASK_BOUND (or within
        seconds, if shorter)."""
        if self._lost.is_set():
            return []
        self._next_ask += 1
        waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._asked[self._next_ask] = waiter
        bound = {} if within is None else {"within": within}
        self._send({"op": "ask", "id": self._next_ask, "topic": topic, **bound, **body})
        return await waiter

    async def _answer(self, message: Message) -> None:
        answer = self._questions.get(str(message.get("topic")))
        body = None
        if answer is not None:
            try:
                body = await answer(message)
            except Exception:  # one figure missing from a total, never a worker down
                logger.exception("could not answer another worker's question")
        self._send({"op": "answer", "id": message["id"], "body": body})

    # --- events this worker commits ----------------------------------------------------

    def committed(self, seq: int) -> None:
        """This worker committed event seq, whichever path then publishes it here (the commit's
        own, or the follower's read of the log that won the race to it): it is announced
        (batched per loop turn), and the call that committed it settles on it."""
        commits = _this_call.get()
        if commits is not None and seq > commits[0]:
            commits[0] = seq
        if seq <= self._local:
            return
        first = self._local <= self._announced
        self._local = seq
        if first:
            asyncio.get_running_loop().call_soon(self._announce)

    def local(self, publish: Callable[[RevocationEvent], T]) -> Callable[[RevocationEvent], T]:
        """publish, for events this worker commits: each is noted (committed) first."""

        def publishing(event: RevocationEvent) -> T:
            self.committed(event.seq)
            return publish(event)

        return publishing

    def _announce(self) -> None:
        if self._local > self._announced:
            self._announced = self._local
            # What this worker has read of the log, not its own event: it may lack one another
            # worker committed just before (the hub then waits for it to read up to here too).
            self._send({"op": "announce", "seq": self._local, "applied": self.follower.applied})

    def begin_call(self) -> list[int]:
        """A unary call starts: the events it commits are gathered here, for settle."""
        commits = [0]
        _this_call.set(commits)  # each RPC runs in its own task, and so its own context
        return commits

    async def settle(self, commits: list[int]) -> None:
        """Returns once every worker applied every event the call committed (none: at once).

        Raises:
            Unavailable: the supervisor is gone (this worker is stopping).
        """
        target = commits[0]
        if target <= self._confirmed:
            return
        if self._lost.is_set():
            raise _unconfirmed()
        self._announce()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(target, []).append(waiter)
        try:  # the hub answers within its bound (it kills a laggard): longer means it is stuck
            await asyncio.wait_for(asyncio.shield(waiter), SETTLE_TIMEOUT)
        except TimeoutError:
            raise _unconfirmed() from None

    def _confirm(self, seq: int) -> None:
        self._confirmed = max(self._confirmed, seq)
        for target in [t for t in self._confirmations if t <= seq]:
            for waiter in self._confirmations.pop(target):
                if not waiter.done():
                    waiter.set_result(None)

    @property
    def lost(self) -> asyncio.Event:
        return self._lost

    def _send(self, message: Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            write_message(self._writer, message)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _unconfirmed() -> Unavailable:
    return Unavailable(
        "the change is recorded, but this server's workers could not all confirm it: the server is"
        " restarting; check with a read before retrying"
    )
