"""Requests that do not decode: INVALID_ARGUMENT with a clear message, not UNKNOWN and a traceback.

gRPC's asyncio server deserializes a request before any handler or
interceptor code runs, and answers a DecodeError with UNKNOWN and a
multi-line ERROR traceback in the log, so anybody could fill the log with
garbage. ``lenient`` wraps a method's deserializer so that it never raises:
it hands on a ``NotDecoded`` instead, which the middleware chain (server/endpoints/chain.py)
turns into ``Undecodable`` after identifying the caller, then counts like any
other refusal (server/endpoints/failures.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from kms.errors import InvalidArgument

__all__ = ["NotDecoded", "Undecodable", "decoded", "lenient"]


class Undecodable(InvalidArgument):
    """A request that is not the protobuf message its method takes."""

    kind = "undecodable"


@dataclass(frozen=True)
class NotDecoded:
    """What the lenient deserializer hands on instead of raising (gRPC would answer UNKNOWN and log a traceback)."""

    message_type: str
    reason: str

    def error(self) -> Undecodable:
        return Undecodable(
            f"the request is not a valid {self.message_type} ({self.reason}): "
            "send the message this method takes, as the stubs generated from protos/kms/v1 do"
        )


def lenient(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    """A deserializer that returns NotDecoded instead of raising (None stays None: raw bytes)."""
    if deserialize is None:
        return None
    message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else f"request of {method}"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, and whatever a deserializer raises on garbage
            reason = str(exc).rpartition(": ")[2][:80] or type(exc).__name__
            return NotDecoded(name, reason)

    return parse


async def decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that raises Undecodable at its first undecodable message."""
    async for request in requests:
        if isinstance(request, NotDecoded):
            raise request.error()
        yield request
