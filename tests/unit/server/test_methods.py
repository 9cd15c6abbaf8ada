"""server/endpoints/methods.py against what the servers really register; the error boundary's reason.

The method list is taken from the handlers each gRPC server of a real
create_server() is given (our services, health and reflection alike), so a
service added to app.py without rows fails here.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool

from kms.errors import (
    REASON_KEY,
    InvalidArgument,
    KmsError,
    Revoked,
    StoreDown,
    Unavailable,
    from_rpc_error,
)
from server.app import create_server
from server.config import ServerConfig
from server.endpoints.auth import AuthInterceptor, Listener
from server.endpoints.methods import METHODS, Role

Registered = dict[str, grpc.RpcMethodHandler]


def _recording(registered: dict[int, Registered]) -> Callable[..., grpc.aio.Server]:
    """grpc.aio.server, noting every handler added to each server it makes."""
    make = grpc.aio.server

    def server(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        made = make(*args, **kwargs)
        seen = registered.setdefault(id(made), {})
        add_registered, add_generic = made.add_registered_method_handlers, made.add_generic_rpc_handlers

        def registered_handlers(service: str, handlers: Registered) -> None:
            seen.update({f"/{service}/{name}": handler for name, handler in handlers.items()})
            add_registered(service, handlers)

        def generic_handlers(handlers: Any) -> None:
            for handler in handlers:
                by_method = getattr(handler, "_method_handlers", None)
                assert by_method is not None, f"cannot tell which methods {handler!r} serves"
                seen.update(by_method)
            add_generic(handlers)

        made.add_registered_method_handlers = registered_handlers  # type: ignore[method-assign]
        made.add_generic_rpc_handlers = generic_handlers  # type: ignore[method-assign]
        return made

    return server


@pytest.fixture(scope="module")
def served() -> Iterator[dict[Listener, Registered]]:
    """The methods each listener of a real server registers (SQLite in a temp dir, ports 0)."""
    root = Path(tempfile.mkdtemp(prefix="kmsm", dir="/tmp"))  # short: the admin socket's path
    flags: dict[str, str | list[str] | None] = {
        "data_dir": str(root / "d"),
        "listen": "127.0.0.1:0",
        "enroll_listen": "127.0.0.1:0",
    }
    registered: dict[int, Registered] = {}

    async def body() -> dict[Listener, Registered]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(grpc.aio, "server", _recording(registered))
            app = await create_server(ServerConfig.load(flags, env={}))
        await app.start()
        await app.stop()
        parts = app.listeners
        servers = {Listener.API: parts.api, Listener.ENROLL: parts.enroll.server, Listener.ADMIN: parts.admin}
        return {listener: registered[id(server)] for listener, server in servers.items()}

    try:
        yield asyncio.run(body())
    finally:
        shutil.rmtree(root, ignore_errors=True)


SERVES = {
    Listener.API: {Role.ANYONE, Role.AGENT},
    Listener.ENROLL: {Role.ANYONE},
    Listener.ADMIN: {Role.ADMIN},
}


@pytest.mark.parametrize("listener", list(Listener), ids=lambda listener: listener.value)
def test_every_registered_method_has_a_row(served: dict[Listener, Registered], listener: Listener) -> None:
    assert served[listener], "nothing recorded: the registrations were not seen"
    assert sorted(set(served[listener]) - set(METHODS)) == []


@pytest.mark.parametrize("listener", list(Listener), ids=lambda listener: listener.value)
def test_rows_fit_the_registered_handlers(served: dict[Listener, Registered], listener: Listener) -> None:
    for method, handler in served[listener].items():
        row = METHODS[method]
        assert row.streams == bool(handler.unary_stream or handler.stream_stream), method
        assert row.role in SERVES[listener], method


def test_standard_services_are_registered_and_listed(served: dict[Listener, Registered]) -> None:
    for listener in (Listener.API, Listener.ENROLL):
        assert {
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/List",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        } <= set(served[listener])
    assert METHODS["/grpc.health.v1.Health/List"] == METHODS["/grpc.health.v1.Health/Check"]


def test_every_row_is_served_somewhere(served: dict[Listener, Registered]) -> None:
    everywhere = set().union(*served.values())
    assert set(METHODS) - everywhere == set()


@pytest.mark.parametrize("listener", list(Listener), ids=lambda listener: listener.value)
def test_every_method_of_every_registered_service_has_a_row(
    served: dict[Listener, Registered], listener: Listener
) -> None:
    """Every method the service's descriptor declares, not only those its servicer registers.

    A servicer that lacks a method (grpc_health's asyncio one had no List) still answers
    it through the generated base class; the table must have said who may call it.
    """
    services = {method.split("/")[1] for method in served[listener]}
    declared = {
        f"/{name}/{method.name}"
        for name in services
        for method in descriptor_pool.Default().FindServiceByName(name).methods
    }
    assert len(declared) >= len(served[listener])
    assert sorted(declared - set(METHODS)) == []


# --- the error boundary -------------------------------------------------------------


def _call_raising(tmp_path: Path, error: Exception) -> grpc.aio.AioRpcError:
    """Calls an admin method whose handler raises error, through the admin listener's chain."""

    async def body() -> grpc.aio.AioRpcError:
        async def failing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            raise error

        server = grpc.aio.server(interceptors=[AuthInterceptor(Listener.ADMIN)])
        handlers = {"GetCA": grpc.unary_unary_rpc_method_handler(failing)}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("kms.v1.Admin", handlers)])
        sock = tmp_path / "t.sock"
        server.add_secure_port(f"unix:{sock}", grpc.local_server_credentials(grpc.LocalConnectionType.UDS))
        await server.start()
        try:
            async with grpc.aio.secure_channel(
                f"unix:{sock}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
            ) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary("/kms.v1.Admin/GetCA")(b"", timeout=10)
                return info.value
        finally:
            await server.stop(0)

    return asyncio.run(body())


@pytest.mark.parametrize(
    "raised, cls, reason",
    [
        (Revoked("client certificate 1f was revoked (key-compromise): enroll again"), Revoked, "revoked"),
        (StoreDown("the database is down: retry shortly"), StoreDown, "store-down"),
        (Unavailable("not now"), Unavailable, "unavailable"),
        (InvalidArgument("bad name"), InvalidArgument, "invalid-argument"),
    ],
    ids=["revoked", "store-down", "unavailable", "invalid-argument"],
)
def test_boundary_sends_the_reason(
    tmp_path: Path, raised: KmsError, cls: type[KmsError], reason: str
) -> None:
    failed = _call_raising(tmp_path, raised)
    assert failed.code() == raised.code and failed.details() == raised.message  # word for word
    assert (REASON_KEY, reason) in tuple(failed.trailing_metadata() or ())
    back = from_rpc_error(failed.code(), failed.details(), failed.trailing_metadata())
    assert type(back) is cls and back.message == raised.message


def test_boundary_hides_unexpected_errors(tmp_path: Path) -> None:
    failed = _call_raising(tmp_path, ValueError("a secret detail"))
    assert failed.code() == grpc.StatusCode.INTERNAL
    assert failed.details() == "internal error: the server log has the details"
    assert (REASON_KEY, "internal") in tuple(failed.trailing_metadata() or ())
