"""The server's event loop: uvloop (libuv) where it is installed, asyncio's own otherwise.

grpc.aio drives every RPC through the event loop: each call is several
callbacks, futures and task steps, and the SQLite store's thread wakes the
loop once per group commit. uvloop runs those in C; measured on FetchKey
(bench/RESULTS.md, issue 20 section 2) the server's CPU per call fell by
about a fifth, with nothing else changed (a noisy shared machine: see
there). Everything the server uses (grpc.aio, UNIX and TCP servers, signal
handlers, executors, asyncio.timeout) runs on it unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on uvloop's loop, or on asyncio's where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # a platform without its wheels (Windows): the server runs all the same
        return asyncio.run(main)
    return uvloop.run(main)
