"""Authentication, authorization and the error boundary, in one place (STYLE 10, 11).

``AUTH_POLICY`` lists every RPC and who may call it; a method missing from
it is refused. ``AuthInterceptor`` wraps every handler: it identifies the
caller on every call, checks the table, exposes the caller to the servicer
through ``current_caller``, and turns KmsError into its status code and any
other exception into INTERNAL without detail (logged with its traceback).
A request that does not decode is INVALID_ARGUMENT, not gRPC's UNKNOWN and
traceback. Refusals of anonymous callers (bad join tokens, refused
certificates, undecodable requests) are counted per peer address
(server/endpoints/failures.py); address-based budgets apply only to those refusals,
never to a caller with a valid token or certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc

from kms.errors import KmsError, PermissionDenied, ResourceExhausted, Unauthenticated
from server.endpoints.authn import Caller, PeerAuthenticator
from server.endpoints.decoding import NotDecoded, Undecodable, decoded, lenient
from server.endpoints.failures import FailureReport
from server.endpoints.limits import AnonymousFailure, RateLimiter, peer_address
from server.ops.metrics import Metrics
from server.revocation.feed import GuardedStream, StreamGuard

__all__ = ["AUTH_POLICY", "AuthInterceptor", "Limits", "Listener", "Role", "current_caller"]

logger = logging.getLogger(__name__)


class Role(Enum):
    ANYONE = "anyone"  # no client certificate needed (enrollment, CA download)
    AGENT = "agent"  # a valid, known agent certificate (mTLS)
    ADMIN = "admin"  # the local admin socket


class Listener(Enum):
    API = "api"  # the mTLS port
    ENROLL = "enroll"  # the enrollment port: anonymous callers only (Role.ANYONE methods)
    ADMIN = "admin"  # the UNIX admin socket


AUTH_POLICY: dict[str, frozenset[Role]] = {
    "/kms.v1.Enrollment/GetCABundle": frozenset({Role.ANYONE}),
    "/kms.v1.Enrollment/Enroll": frozenset({Role.ANYONE}),
    "/kms.v1.Identity/WhoAmI": frozenset({Role.AGENT}),
    "/kms.v1.Identity/Renew": frozenset({Role.AGENT}),
    "/kms.v1.Admin/CreateJoinToken": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/GetCA": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/ListAgents": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/CreateKey": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/RotateKey": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/GrantKey": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/UngrantKey": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/ListKeys": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/DestroyKeyVersion": frozenset({Role.ADMIN}),
    "/kms.v1.Keys/FetchKey": frozenset({Role.AGENT}),
    "/kms.v1.Admin/RevokeCertificate": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/RevokeAgent": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/RevokeKey": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/ListRevocations": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/ListAudit": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/VerifyAudit": frozenset({Role.ADMIN}),
    "/kms.v1.Admin/Backup": frozenset({Role.ADMIN}),
    "/kms.v1.Revocation/Watch": frozenset({Role.AGENT}),
    "/kms.v1.Revocation/GetCRL": frozenset({Role.ANYONE}),
    "/kms.v1.Revocation/CheckCertificate": frozenset({Role.AGENT}),
    "/kms.v1.Handshake/Exchange": frozenset({Role.AGENT}),
    "/kms.v1.Handshake/Listen": frozenset({Role.AGENT}),
    # Standard services for load balancers and tools: public, like the CA bundle.
    "/grpc.health.v1.Health/Check": frozenset({Role.ANYONE}),
    "/grpc.health.v1.Health/Watch": frozenset({Role.ANYONE}),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": frozenset({Role.ANYONE}),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": frozenset({Role.ANYONE}),
}

_ENROLL = "/kms.v1.Enrollment/Enroll"


@dataclass
class Limits:
    """Failed enrollment attempts and refused join tokens per peer address; open streams per agent.

    The address budgets count only attempts that fail without a valid secret
    (AnonymousFailure): a valid join token enrolls, and a valid certificate is
    served, whatever others at the same address (a NAT, a proxy) have done.
    """

    enrollments: RateLimiter
    auth_failures: RateLimiter
    max_streams: int

    def over_budget(self, method: str, address: str, failure: KmsError) -> ResourceExhausted | None:
        """Counts a failed anonymous attempt; the answer to give instead once its address is over budget."""
        wait = self.enrollments.take(address) if method == _ENROLL else 0.0
        if not wait and isinstance(failure, Unauthenticated):
            wait = self.auth_failures.take(address)
        if not wait:
            return None
        return ResourceExhausted(
            f"too many failed enrollment attempts from {address}: check the join token, then retry in"
            f" {math.ceil(wait)}s (a valid token is accepted even now)"
        )

    def check_streams(self, open_now: int) -> None:
        if open_now >= self.max_streams:
            raise ResourceExhausted(
                f"this agent already holds {open_now} open streams, all its certificates together (the limit): "
                "close one, then retry"
            )


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)

_INTERNAL = "internal error: the server log has the details"


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler of one listener.

    Args:
        listener: which port (or socket) the server serves.
        authenticator, guard: the mTLS port's certificate check and stream registry.
        metrics: RPC counts and latencies.
        limits: address budgets for failed anonymous attempts, and streams per identity.
        report: where refusals are counted (a bounded log, aggregate audit records).
        peer: the real address of a gRPC peer string (the enrollment gate knows it
            for the connections it relays).
    """

    def __init__(
        self,
        listener: Listener,
        authenticator: PeerAuthenticator | None = None,
        guard: StreamGuard | None = None,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
        report: FailureReport | None = None,
        peer: Callable[[str], str] = peer_address,
    ) -> None:
        if listener is Listener.API and (authenticator is None or guard is None):
            raise ValueError("the API listener needs a PeerAuthenticator and a StreamGuard")
        self._listener = listener
        self._authenticator = authenticator
        self._guard = guard
        self._metrics = metrics
        self._limits = limits
        self._report = report
        self._peer = peer
        # The wrapped handler of each method, built on its first call: the
        # interceptor runs on every RPC, and the handlers never change.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None  # not served here: gRPC answers UNIMPLEMENTED, and nothing is counted
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        allowed = AUTH_POLICY.get(method)
        # Every server stream is long-lived (ours, and health and reflection too): each one an
        # agent opens counts against its bound, or it could hold any number of them.
        streams = bool(handler.unary_stream or handler.stream_stream)
        authorize = self._authorizer(method, allowed, streams)
        deserialize = lenient(handler.request_deserializer, method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, authorize, method, streaming=False),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, authorize, method, streaming=False),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, authorize, method, streaming=True),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, authorize, method, streaming=True),
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )

    # --- who is calling, and may they ---------------------------------------------

    def _authorizer(
        self, method: str, allowed: frozenset[Role] | None, streams: bool
    ) -> Callable[[grpc.aio.ServicerContext], Awaitable[Caller | None]]:
        async def authorize(context: grpc.aio.ServicerContext) -> Caller | None:
            if allowed is None:
                logger.error("refused %s: method is missing from AUTH_POLICY", method)
                raise PermissionDenied(f"{method} is not allowed for anyone on this server")
            auth = context.auth_context()
            if self._listener is Listener.ADMIN:
                # The admin server listens only on the 0600 UNIX socket with local credentials.
                if Role.ADMIN not in allowed or auth.get("transport_security_type") != [b"local"]:
                    raise PermissionDenied(f"{method} is not an admin method")
                return None
            if self._listener is Listener.ENROLL:
                # Only Role.ANYONE methods are registered there; this is the fail-closed backstop.
                if Role.ANYONE not in allowed:
                    raise PermissionDenied(f"{method} is not served on the enrollment address")
                return None
            peer_pem = auth.get("x509_pem_cert")
            caller = None
            if peer_pem:
                assert self._authenticator is not None
                caller = await self._authenticator.authenticate(peer_pem[0])
                if self._limits is not None and self._guard is not None and streams:
                    self._limits.check_streams(self._guard.open_streams(caller.name))
            if Role.ANYONE in allowed:
                return caller
            if Role.AGENT in allowed:
                if caller is None:
                    raise Unauthenticated(
                        f"{method} needs the agent's client certificate: call the mTLS address, not the enrollment one"
                    )
                return caller
            raise PermissionDenied(f"{method} is not allowed on this listener")

        return authorize

    # --- wrappers: one per call shape ----------------------------------------------

    def _observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        if self._metrics is None:
            return
        self._metrics.observe_rpc(method, code.name, seconds)
        if code is grpc.StatusCode.OK:
            if method in ("/kms.v1.Enrollment/Enroll", "/kms.v1.Identity/Renew"):
                self._metrics.enrollments.inc()
            elif method == "/kms.v1.Keys/FetchKey":
                self._metrics.key_releases.inc()

    def _answer(self, context: grpc.aio.ServicerContext, exc: KmsError, method: str) -> KmsError:
        """Counts a refusal where it must be counted; the error to answer with."""
        anonymous = isinstance(exc, AnonymousFailure)
        if not (anonymous or isinstance(exc, Unauthenticated | Undecodable)):
            return exc
        address = self._peer(context.peer())
        answer = exc
        if anonymous and self._limits is not None:
            answer = self._limits.over_budget(method, address, exc) or exc
        if self._report is not None:
            # On the mTLS port, an undecodable request comes from a valid agent: logged, not audited.
            audited = not (isinstance(exc, Undecodable) and self._listener is Listener.API)
            kind = getattr(exc, "kind", "bad-certificate")
            self._report.note(address, kind, f"{method}: {_detail(exc)}", anonymous=audited)
        return answer

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
        if isinstance(exc, KmsError):
            await context.abort(exc.code, exc.message)
        logger.error("unhandled error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL)

    def _wrap_unary(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
        authorize: Callable[[grpc.aio.ServicerContext], Awaitable[Caller | None]],
        method: str,
        *,
        streaming: bool,
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                token = current_caller.set(await authorize(context))
                try:
                    if streaming:
                        request = decoded(request)
                    elif isinstance(request, NotDecoded):
                        raise request.error()
                    return await behavior(request, context)
                finally:
                    current_caller.reset(token)
            except grpc.aio.AbortError:
                code = grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                if isinstance(exc, KmsError):
                    exc = self._answer(context, exc, method)
                code = exc.code if isinstance(exc, KmsError) else grpc.StatusCode.INTERNAL
                await self._abort(context, exc, behavior.__qualname__)
            finally:
                self._observe(method, code, time.perf_counter() - started)

        return wrapper

    def _wrap_stream(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[Any, None]],
        authorize: Callable[[grpc.aio.ServicerContext], Awaitable[Caller | None]],
        method: str,
        *,
        streaming: bool,
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                caller = await authorize(context)
                if streaming:
                    request = decoded(request)
                elif isinstance(request, NotDecoded):
                    raise request.error()
                # Not reset afterwards: each RPC runs in its own task (and so its own
                # context), and a closing generator may run its cleanup in another.
                current_caller.set(caller)
                task = asyncio.current_task()
                if caller is None or self._guard is None or task is None:
                    async for response in _responses(behavior(request, context)):
                        yield response
                    return
                # Open streams of a certificate are closed when it is revoked:
                # TLS and the per-call check act only on new calls.
                stream = GuardedStream(task, caller.serial, caller.name)
                self._guard.register(stream)
                try:
                    async with contextlib.aclosing(_responses(behavior(request, context))) as responses:
                        async for response in responses:
                            stream.sending = True
                            yield response
                            stream.sending = False
                            if stream.reason is not None:  # revoked while gRPC was sending
                                raise stream.error()
                except asyncio.CancelledError:
                    if stream.reason is None:  # the client went away, or the server is stopping
                        raise
                    task.uncancel()  # revoked: end with a status, not silently (see GuardedStream)
                    raise stream.error() from None
                finally:
                    self._guard.unregister(stream)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                if isinstance(exc, KmsError):
                    exc = self._answer(context, exc, method)
                await self._abort(context, exc, behavior.__qualname__)

        return wrapper


async def _responses(handled: Any) -> AsyncGenerator[Any, None]:
    """A stream handler's responses as one async generator, closed when this one is.

    A handler that writes with context.write (grpc_health's Watch) is a coroutine,
    not an async generator: it is awaited, and its writes go out as it makes them.
    """
    if inspect.isawaitable(handled):
        await handled
        return
    async with contextlib.aclosing(handled) as responses:
        async for response in responses:
            yield response


def _detail(exc: KmsError) -> str:
    """What the log says of a refusal: the message, and the token's id (never its secret) if any."""
    token_id = getattr(exc, "token_id", None)
    return f"{exc.message} (token {token_id})" if token_id else exc.message
