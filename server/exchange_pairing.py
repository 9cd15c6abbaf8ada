"""One initiator's attempt with a listener, as both sides of the relay see it (server/exchange.py).

Each side hands the other frames, or the KmsError that ended its part, through
the pairing: ``tell_initiator`` and ``tell_responder``. In one process both are
queues. When the two agents are on different workers (server/exchange_relay.py),
the side on this worker reads its own queue as usual, and what it tells the
other side goes over the supervisor's socket instead (``RelayedPairing``), in
the JSON of its messages: a frame as base64, an error as its status, reason and
message, so that the other worker raises the very error one process would.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from kms.errors import REASON_KEY, FailedPrecondition, KmsError, from_rpc_error
from kms.v1 import handshake_pb2

__all__ = [
    "LARGEST_RELAYED",
    "WAITING_MAX",
    "Frame",
    "Item",
    "Listener",
    "Pairing",
    "RelayedPairing",
    "decode_item",
    "encode_item",
    "not_listening",
]

Frame = handshake_pb2.HandshakeFrame
# What one side hands the other: the next frame, or why there is none.
Item = Frame | KmsError

# Initiators that may wait for one busy listener; more are told to retry.
WAITING_MAX = 8
# The largest frame relayed between workers: a genuine one is a few kilobytes (a chain is at most
# 4 certificates of 8 KiB, kms/handshake.py), and the supervisor's socket takes messages of at
# most 16 MiB (server/workers/protocol.py), base64 included. One process relays a larger frame
# unchanged, for the other agent to refuse; between workers the side that sent it fails instead.
LARGEST_RELAYED = 256 * 1024


def not_listening(name: str) -> FailedPrecondition:
    # One answer for unknown, revoked and absent agents: no oracle for names or revocations.
    return FailedPrecondition(
        f"agent {name!r} is not listening on this server: run `kms-agent listen` there (with several "
        "replicas, connected to the same replica as this agent), then retry"
    )


@dataclass(eq=False)
class Pairing:
    """One initiator's attempt with a listener; each side posts a KmsError to the other if it fails."""

    initiator: str
    hello: Frame
    to_responder: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    to_initiator: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    abandoned: bool = False  # the initiator gave up: a listener skips it

    def tell_initiator(self, item: Item) -> None:
        self.to_initiator.put_nowait(item)

    def tell_responder(self, item: Item) -> None:
        self.to_responder.put_nowait(item)


@dataclass(eq=False)
class RelayedPairing(Pairing):
    """This worker's half of a pairing whose other side is on another worker.

    side is the side on this worker ("initiator" or "responder"); what it tells the
    other side goes to send, and the other side's items arrive in its own queue.
    """

    side: str = "initiator"
    send: Callable[[Item], None] = field(default=lambda item: None)
    relay_id: int = 0  # the initiator's worker's id for it

    def tell_initiator(self, item: Item) -> None:
        if self.side == "initiator":
            super().tell_initiator(item)
        else:
            self.send(item)

    def tell_responder(self, item: Item) -> None:
        if self.side == "responder":
            super().tell_responder(item)
        else:
            self.send(item)


@dataclass(eq=False)
class Listener:
    serial: str  # the certificate its Listen stream was opened with
    waiting: asyncio.Queue[Pairing] = field(default_factory=lambda: asyncio.Queue(WAITING_MAX))
    # Initiators with an attempt queued or under way: one each, so that no agent can fill
    # the queue (or keep the listener busy) with attempts of its own.
    initiators: set[str] = field(default_factory=set)
    # When it was admitted (CLOCK_MONOTONIC: one clock for every worker of a host), which
    # decides between two Listens of one agent admitted by two workers at once.
    since: int = field(default_factory=time.monotonic_ns)
    # Why its stream must end (another worker's earlier Listen of the agent stands), once so.
    superseded: KmsError | None = None


def encode_item(item: Item) -> dict[str, str]:
    """item as JSON fields of a message between workers.

    Raises:
        FailedPrecondition: a frame larger than LARGEST_RELAYED.
    """
    if isinstance(item, KmsError):
        return {"code": item.code.name, "reason": item.reason, "message": item.message}
    data = item.SerializeToString()
    if len(data) > LARGEST_RELAYED:
        raise FailedPrecondition(
            f"a handshake frame of {len(data)} bytes is larger than any genuine one (at most {LARGEST_RELAYED})"
        )
    return {"frame": base64.b64encode(data).decode("ascii")}


def decode_item(message: dict[str, Any]) -> Item:
    """The item encode_item made (the error of the same class, status and message).

    Raises:
        ValueError: neither a frame nor an error (a confused peer).
    """
    if "frame" in message:
        return Frame.FromString(base64.b64decode(str(message["frame"]), validate=True))
    code = grpc.StatusCode.__members__.get(str(message.get("code")))
    if code is None:
        raise ValueError("a relayed item without a frame or a known status")
    return from_rpc_error(
        code, str(message.get("message", "")), [(REASON_KEY, str(message.get("reason", "")))]
    )
