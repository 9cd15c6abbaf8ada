"""The supervisor's end of the workers' socket: event positions in, confirmations out.

A worker that commits events announces the newest one's seq; the hub wakes
every other worker, which reads the log up to there (server/revocation/follower.py)
and answers with the seq it has applied. Once every live worker has applied
it, the announcing worker is told ``confirmed``: a revocation then refuses the
revoked certificate on every worker, and closes its streams there, before
the call that made it returns. A worker that has not answered within
``bound`` is killed (the supervisor restarts it, and it reads the store
afresh before it serves): failing closed, never confirming what was not done.

Other messages are relayed: ``cast`` to every other worker, ``to`` one worker
(both arrive as ``cast``, with the sender's index in ``from``), and ``ask``
every other worker that is ready (one still starting answers nothing until its
link runs), whose ``answer``s come back together as ``answers``, each as
{"from": index, "body": answer}, within ASK_BOUND or the shorter ``within``
the asker gave: for
what each worker keeps in memory from its peers' notes, and for the figures
of the whole server. The hub itself tells the others of a worker that joins
(``worker.joined``, also when a restarted one takes the place of the old) and of one
that leaves (``worker.left``), as casts from that worker: what they keep from its
notes is then out of date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from server.workers.protocol import Message, read_message, write_message

__all__ = ["ASK_BOUND", "CONFIRM_BOUND", "WORKER_JOINED", "WORKER_LEFT", "Hub"]

logger = logging.getLogger(__name__)

# How long every worker has to apply an event before the laggards are killed.
CONFIRM_BOUND = 1.0
# How long a question to every worker (their figures for /metrics, `top`) waits for answers,
# at most (an ask may say "within": a shorter bound).
ASK_BOUND = 2.0
# The topics of the casts the hub makes in a worker's name when it joins and when it leaves.
WORKER_JOINED = "worker.joined"
WORKER_LEFT = "worker.left"


@dataclass(eq=False)
class _Peer:
    index: int
    pid: int
    writer: asyncio.StreamWriter
    applied: int = 0
    ready: bool = False
    details: Message = field(default_factory=dict)

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            write_message(self.writer, message)


class Hub:
    """Args:
    path: the UNIX socket to listen on (0600, in the data dir).
    kill: ends a worker that could not confirm in time (returns once it is gone).
    bound: CONFIRM_BOUND, in seconds.
    """

    def __init__(
        self, path: Path, kill: Callable[[int], Awaitable[None]], bound: float = CONFIRM_BOUND
    ) -> None:
        self.path = path
        self._kill = kill
        self._bound = bound
        self._peers: dict[int, _Peer] = {}
        self._changed = asyncio.Condition()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[object]] = set()
        # The newest seq any worker announced: a worker that joins reads up to it before serving.
        self.announced = 0
        # Set by the supervisor as it stops the workers: their connections then end as they should.
        self.stopping = False
        # Questions to every other worker, by the hub's id: the answers so far, by worker index.
        self._asks: dict[int, dict[int, object]] = {}
        self._next_ask = 0

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # stale: the supervisor holds the data dir lock
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for peer in list(self._peers.values()):
            peer.writer.close()
        if self._connections:  # each ends once its socket is closed (never cancelled mid-read)
            await asyncio.wait(self._connections, timeout=5)
        self.path.unlink(missing_ok=True)

    def ready(self, index: int) -> Message | None:
        """What worker index said when it became ready to serve (None: not ready)."""
        peer = self._peers.get(index)
        return peer.details if peer is not None and peer.ready else None

    async def wait_ready(self, index: int) -> Message:
        async with self._changed:
            await self._changed.wait_for(lambda: self.ready(index) is not None)
        details = self.ready(index)
        assert details is not None
        return details

    async def gone(self, index: int) -> None:
        """Worker index exited: nothing waits for it any more, and the others drop what it held open."""
        peer = self._peers.pop(index, None)
        if peer is not None:
            peer.writer.close()
        self._tell_others(index, WORKER_LEFT)  # they drop what it held open, fail its relays
        async with self._changed:
            self._changed.notify_all()

    # --- one worker's connection ---------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: _Peer | None = None
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            hello = await read_message(reader)
            if hello is None or hello["op"] != "hello":
                return
            peer = _Peer(int(hello["index"]), int(hello["pid"]), writer, int(hello["applied"]))
            old = self._peers.get(peer.index)
            if old is not None:
                old.writer.close()
            self._peers[peer.index] = peer
            peer.send({"op": "welcome", "seq": self.announced})
            self._tell_others(peer.index, WORKER_JOINED)
            while (message := await read_message(reader)) is not None:
                if self._peers.get(peer.index) is not peer:
                    break  # gone (or replaced): what it still had to say is stale
                await self._dispatch(peer, message)
        except (ConnectionError, ValueError, KeyError, TypeError) as exc:
            logger.warning("dropped a worker's connection: %s", exc)
        finally:
            writer.close()
            if peer is not None and self._peers.get(peer.index) is peer:
                del self._peers[peer.index]
                async with self._changed:
                    self._changed.notify_all()
                if not self.stopping:
                    # A worker that left the hub but may still serve hears of no revocation:
                    # it is ended (fail closed), and started again; gone() tells the others.
                    logger.error("worker %d left the supervisor's socket: ending it", peer.index)
                    self._spawn(self._kill(peer.index))
                else:
                    self._tell_others(peer.index, WORKER_LEFT)

    def _tell_others(self, index: int, topic: str) -> None:
        for other in list(self._peers.values()):
            if other.index != index:
                other.send({"op": "cast", "topic": topic, "from": index})

    async def _dispatch(self, peer: _Peer, message: Message) -> None:
        op = message["op"]
        if op == "announce":
            seq = int(message["seq"])
            # What it has read of the log: its own event may sit above one it has not read yet.
            peer.applied = max(peer.applied, int(message["applied"]))
            self.announced = max(self.announced, seq)
            self._spawn(self._confirm(peer, seq))
        elif op == "applied":
            peer.applied = max(peer.applied, int(message["seq"]))
            async with self._changed:
                self._changed.notify_all()
        elif op == "ready":
            peer.ready, peer.details = True, message
            async with self._changed:
                self._changed.notify_all()
        elif op == "cast":
            for other in list(self._peers.values()):
                if other is not peer:
                    other.send({**message, "from": peer.index})
        elif op == "to":
            target = self._peers.get(int(message["index"]))
            if target is not None:
                target.send({**message, "op": "cast", "from": peer.index})
        elif op == "ask":
            self._spawn(self._ask(peer, message))
        elif op == "answer":
            pending = self._asks.get(int(message["id"]))
            if pending is not None:
                pending[peer.index] = message.get("body")
                async with self._changed:
                    self._changed.notify_all()
        else:
            logger.warning("unknown message from worker %d: %s", peer.index, op)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, origin: _Peer, message: Message) -> None:
        """Asks every other worker that is ready; answers origin with what they said within the
        bound, each answer with its worker's index."""
        self._next_ask += 1
        ask_id, answers = self._next_ask, dict[int, object]()
        self._asks[ask_id] = answers
        asked = [p for p in self._peers.values() if p is not origin and p.ready]
        for peer in asked:
            peer.send({**message, "id": ask_id, "from": origin.index})
        bound = min(ASK_BOUND, max(0.0, float(message.get("within") or ASK_BOUND)))
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(bound), self._changed:
                    await self._changed.wait_for(
                        lambda: all(p.index in answers or self._peers.get(p.index) is not p for p in asked)
                    )
        finally:
            del self._asks[ask_id]
        said = [{"from": index, "body": body} for index, body in answers.items()]
        origin.send({"op": "answers", "id": message["id"], "answers": said})

    async def _confirm(self, origin: _Peer, seq: int) -> None:
        """Wakes every worker behind seq (origin too: it may lack an event another worker committed
        before its own); confirms seq to origin once every live worker applied it."""
        for peer in list(self._peers.values()):
            if peer.applied < seq:
                peer.send({"op": "wake", "seq": seq})

        def behind() -> list[_Peer]:
            return [p for p in self._peers.values() if p.applied < seq]

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._bound), self._changed:
                await self._changed.wait_for(lambda: not behind())
        laggards = behind()
        for peer in laggards:
            logger.error(
                "worker %d did not apply event %d within %.1f s: restarting it (fail closed)",
                peer.index,
                seq,
                self._bound,
            )
        await asyncio.gather(*(self._kill(peer.index) for peer in laggards))
        origin.send({"op": "confirmed", "seq": seq})
