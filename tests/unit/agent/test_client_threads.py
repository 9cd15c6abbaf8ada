"""agent/client.py: grpc's connectivity-polling thread, raising as its channel closes, prints nothing."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import pytest

from agent.client import quiet_closed_channel_polling
from kms.errors import KmsError


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


def test_connected_is_false_for_an_address_where_nothing_listens_with_or_without_a_stream() -> None:
    import socket

    import grpc

    from agent.client import Endpoint

    with socket.socket() as held:  # a port nothing listens on while the test runs
        held.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{held.getsockname()[1]}"
        one_shot = Endpoint(address, grpc.ssl_channel_credentials(), 1.0)
        streaming = Endpoint(address, grpc.ssl_channel_credentials(), 1.0)
        streaming.follow_connection()
        try:
            assert not one_shot.connected  # asked now: no subscription was kept before
            assert not streaming.connected  # kept since follow_connection: never READY
        finally:
            one_shot.close()
            streaming.close()


def test_connected_is_true_once_a_server_answered_with_or_without_a_stream() -> None:
    """One-shot calls ask for the state only after a deadline (grpc's close() waits out a kept
    subscription's pending poll, up to 200 ms); streams keep it from follow_connection on."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from agent.client import Endpoint
    from kms.v1 import identity_pb2

    local = grpc.LocalConnectionType.LOCAL_TCP
    server = grpc.server(ThreadPoolExecutor(1))  # no service: each call is answered UNIMPLEMENTED
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials(local))
    server.start()
    endpoint = Endpoint(f"127.0.0.1:{port}", grpc.local_channel_credentials(local), 5.0)
    try:
        with pytest.raises(KmsError):
            endpoint.call(endpoint.identity.WhoAmI, identity_pb2.WhoAmIRequest())
        assert endpoint.connected  # asked now, over a short subscription
        endpoint.follow_connection()
        assert endpoint.connected  # kept from here on
    finally:
        endpoint.close()
        server.stop(None)
