"""agent/client.py: grpc's connectivity-polling thread, raising as its channel closes, prints nothing."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from agent.client import quiet_closed_channel_polling


def _raised_in(filename: str, function: str) -> threading.ExceptHookArgs:
    scope: dict[str, Any] = {}
    exec(
        compile(
            f"def {function}():\n    raise ValueError('Cannot invoke RPC on closed channel!')\n",
            filename,
            "exec",
        ),
        scope,
    )  # noqa: S102 - a frame named as grpc's
    try:
        scope[function]()
    except ValueError as exc:
        tb: TracebackType | None = exc.__traceback__
        return threading.ExceptHookArgs((ValueError, exc, tb, None))  # type: ignore[call-arg,arg-type]
    raise AssertionError("not raised")


def test_the_polling_threads_closed_channel_error_is_dropped_and_others_are_not() -> None:
    seen: list[threading.ExceptHookArgs] = []
    polling = _raised_in("/x/site-packages/grpc/_channel.py", "_poll_connectivity")
    quiet_closed_channel_polling(polling, seen.append)
    assert seen == []
    for other in (
        _raised_in("/x/site-packages/grpc/_channel.py", "_consume"),
        _raised_in("/x/agent/mine.py", "_poll_connectivity"),
    ):
        quiet_closed_channel_polling(other, seen.append)
    assert len(seen) == 2
    assert threading.excepthook is quiet_closed_channel_polling  # installed when the client loads
