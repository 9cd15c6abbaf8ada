"""The supervisor's socket between workers: length-prefixed JSON messages, one per frame.

Small control messages only (event positions, TLS reloads, limit notes): the
store stays the truth for every event, and a message lost with a dying worker
costs a delay, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

__all__ = ["MAX_FRAME", "Message", "read_message", "write_message"]

Message = dict[str, Any]

# A control message is a few hundred bytes, a worker's /metrics samples some tens of KiB
# compressed; a larger frame is a confused peer (its connection ends, and with it the worker).
MAX_FRAME = 16 << 20
_HEADER = struct.Struct(">I")


def write_message(writer: asyncio.StreamWriter, message: Message) -> None:
    """Queues one message on writer (the caller drains when it must wait for the peer)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    writer.write(_HEADER.pack(len(body)) + body)


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None once the peer has closed the connection.

    Raises:
        ValueError: a frame too large or not a JSON object.
    """
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes from a worker (at most {MAX_FRAME})")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    message = json.loads(body)
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError("a message without an op")
    return message
