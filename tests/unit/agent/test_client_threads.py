"""agent/client.py: grpc's connectivity-polling thread prints nothing as its channel closes;
Endpoint.connected tells a silent address (try the next) from a server that had the call (final)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import grpc
import pytest

from agent.client import Endpoint, quiet_closed_channel_polling
from agent.servers import Unreachable
from kms.errors import DeadlineExceeded, KmsError
from kms.v1 import identity_pb2

_LOCAL = grpc.LocalConnectionType.LOCAL_TCP


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


def _call(endpoint: Endpoint) -> KmsError:
    with pytest.raises(KmsError) as info:
        endpoint.call(endpoint.identity.WhoAmI, identity_pb2.WhoAmIRequest())
    return info.value


def test_a_deadline_on_an_address_that_never_completes_a_connection_is_unreachable() -> None:
    with socket.socket() as silent:  # accepts TCP (the kernel does), never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = Endpoint(f"127.0.0.1:{silent.getsockname()[1]}", grpc.ssl_channel_credentials(), 1.0)
        try:
            assert isinstance(_call(endpoint), Unreachable)
            assert not endpoint.connected
        finally:
            endpoint.close()


def _local_server(handlers: tuple[grpc.GenericRpcHandler, ...] = ()) -> tuple[grpc.Server, Endpoint]:
    server = grpc.server(ThreadPoolExecutor(2), handlers=handlers)
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials(_LOCAL))
    server.start()
    return server, Endpoint(f"127.0.0.1:{port}", grpc.local_channel_credentials(_LOCAL), 1.0)


def test_connected_is_true_once_a_server_answered_with_or_without_a_stream() -> None:
    """One-shot calls ask for the state only after a deadline (grpc's close() waits out a kept
    subscription's pending poll, up to 200 ms); streams keep it from follow_connection on."""
    server, endpoint = _local_server()  # no service: each call is answered UNIMPLEMENTED
    try:
        _call(endpoint)
        assert endpoint.connected  # asked now, over a short subscription
        endpoint.follow_connection()
        deadline = time.monotonic() + 10
        while not endpoint.connected:  # grpc reports the state from its polling thread
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        endpoint.close()
        server.stop(None)


def _going_away_during_a_call() -> KmsError:
    """A rolling restart: the server took the call, says GOAWAY and lets calls finish within its
    grace; the client's deadline passes meanwhile."""
    received = threading.Event()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.set()
        time.sleep(3)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "kms.v1.Identity", {"WhoAmI": grpc.unary_unary_rpc_method_handler(slow)}
    )
    server, endpoint = _local_server((handler,))
    try:
        stopping = threading.Thread(target=lambda: (received.wait(10), server.stop(5)))
        stopping.start()
        error = _call(endpoint)
        stopping.join()
        assert received.is_set()
        return error
    finally:
        endpoint.close()
        server.stop(None)


def test_a_deadline_on_a_server_that_had_the_call_and_is_going_away_is_final() -> None:
    """Not unreachable: another replica must not get the call too."""
    for _ in range(5):
        error = _going_away_during_a_call()
        # grpc sometimes ends such a call UNAVAILABLE instead (the socket closed under it):
        # always "try the next address", whatever this test is about; then try again.
        if not (isinstance(error, Unreachable) and "no connection within" not in error.message):
            break
    assert isinstance(error, DeadlineExceeded), error
