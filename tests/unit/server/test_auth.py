"""server/endpoints/auth.py and methods.py: one table covers every RPC; a method missing from it is refused."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import grpc
import pytest

import kms.v1
from server.endpoints.auth import AuthInterceptor, Listener, Role
from server.endpoints.methods import METHODS


def _all_methods() -> set[str]:
    """Every RPC of every generated module, found by walking kms/v1/."""
    methods = set()
    for path in sorted((Path(kms.v1.__file__).parent).glob("*_pb2.py")):
        module = importlib.import_module(f"kms.v1.{path.stem}")
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods


STANDARD = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/List",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
}


def test_table_lists_exactly_the_rpcs_of_the_contract() -> None:
    assert set(METHODS) == _all_methods() | STANDARD


def test_only_enrollment_is_open_to_anyone() -> None:
    open_methods = {m for m, row in METHODS.items() if row.role is Role.ANYONE}
    assert (
        open_methods
        == {
            "/kms.v1.Enrollment/Enroll",
            "/kms.v1.Enrollment/GetCABundle",
            "/kms.v1.Revocation/GetCRL",
        }
        | STANDARD
    )
    assert all(row.role is Role.ADMIN for m, row in METHODS.items() if m.startswith("/kms.v1.Admin/"))


def test_method_missing_from_table_is_refused(tmp_path: Path) -> None:
    """A real grpc.aio server with the interceptor and a handler nobody listed."""

    async def body() -> tuple[grpc.StatusCode, str]:
        async def unlisted(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return b"should never run"

        server = grpc.aio.server(interceptors=[AuthInterceptor(Listener.ADMIN)])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "kms.v1.Test", {"Unlisted": grpc.unary_unary_rpc_method_handler(unlisted)}
                )
            ]
        )
        sock = tmp_path / "t.sock"
        server.add_secure_port(f"unix:{sock}", grpc.local_server_credentials(grpc.LocalConnectionType.UDS))
        await server.start()
        try:
            async with grpc.aio.secure_channel(
                f"unix:{sock}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
            ) as channel:
                call = channel.unary_unary("/kms.v1.Test/Unlisted")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(b"", timeout=10)
                return info.value.code(), info.value.details() or ""
        finally:
            await server.stop(0)

    code, details = asyncio.run(body())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "/kms.v1.Test/Unlisted" in details
