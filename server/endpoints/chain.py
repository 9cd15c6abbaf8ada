"""Runs a method's middlewares around its handler, for each of gRPC's call shapes.

The befores run in chain order, then the request is decoded (after the caller
was identified and admitted: server/endpoints/decoding.py), then the handler
runs with the caller in ``current_caller``, then the afters run in reverse
order and the error boundary (MapErrors) answers any error. The open server
streams of a caller are registered with the StreamGuard, so that a revocation
closes them with the status its next call would get.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

from server.endpoints.authn import Caller
from server.endpoints.decoding import NotDecoded, decoded, lenient
from server.endpoints.methods import Method
from server.endpoints.middleware import Call, MapErrors, Middleware
from server.revocation.feed import GuardedStream, StreamGuard

__all__ = ["Chain", "Settle", "current_caller"]

# Who is calling, for the servicer (None: no client certificate, or the admin socket).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)


class Settle(Protocol):
    """Holds back a call's answer until what it committed took effect in every worker (server/workers/link.py)."""

    def begin_call(self) -> list[int]: ...

    async def settle(self, commits: list[int]) -> None: ...


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class Chain:
    """The middlewares of one method, outermost first, ready to wrap its handler.

    Args:
        method, row: the full method name and its row (None: not in the table).
        middlewares: those that apply to this method, outermost first; boundary among them.
        boundary: the MapErrors that answers errors.
        guard: where a caller's open streams are registered (None: not tracked).
    """

    def __init__(
        self,
        method: str,
        row: Method | None,
        middlewares: Sequence[Middleware],
        boundary: MapErrors,
        guard: StreamGuard | None,
        settle: Settle | None = None,
    ) -> None:
        self._method = method
        self._row = row
        # Only the steps a middleware defines: each call runs no empty ones.
        self._befores = [m.before for m in middlewares if type(m).before is not Middleware.before]
        self._afters = [m.after for m in reversed(middlewares) if type(m).after is not Middleware.after]
        # An answered call passes only the afters that look at answers (Observe): most are
        # about errors, and every step counts on FetchKey's path.
        self._afters_answered = [
            m.after
            for m in reversed(middlewares)
            if type(m).after is not Middleware.after and m.after_success
        ]
        self._boundary = boundary
        self._guard = guard
        self._settle_with = settle

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize = lenient(handler.request_deserializer, self._method)
        serialize = handler.response_serializer
        if handler.unary_unary:
            behavior = self._unary(handler.unary_unary, streaming=False)
            return grpc.unary_unary_rpc_method_handler(behavior, deserialize, serialize)
        if handler.unary_stream:
            streamed = self._stream(handler.unary_stream, streaming=False)
            return grpc.unary_stream_rpc_method_handler(streamed, deserialize, serialize)
        if handler.stream_unary:
            behavior = self._unary(handler.stream_unary, streaming=True)
            return grpc.stream_unary_rpc_method_handler(behavior, deserialize, serialize)
        streamed = self._stream(handler.stream_stream, streaming=True)
        return grpc.stream_stream_rpc_method_handler(streamed, deserialize, serialize)

    async def _enter(self, call: Call, request: Any, streaming: bool) -> Any:
        """Runs the befores; the request, decoded (a request stream: as it is read)."""
        for before in self._befores:
            await before(call)
        if streaming:
            return decoded(request)
        if isinstance(request, NotDecoded):
            raise request.error()
        return request

    def _settle(self, call: Call, error: BaseException | None) -> BaseException | None:
        for after in self._afters if error is not None else self._afters_answered:
            error = after(call, error)
        return error

    async def _committing(self, behavior: Unary, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The handler's answer, given only once every worker applied what it committed: a
        revocation returns once every worker refuses what it revoked (one process: at once)."""
        settle = self._settle_with
        if settle is None:
            return await behavior(request, context)
        commits = settle.begin_call()
        try:
            response = await behavior(request, context)
        except Exception:
            await settle.settle(commits)  # a refusal after a commit, too, waits for it
            raise
        await settle.settle(commits)
        return response

    def _unary(self, behavior: Unary, *, streaming: bool) -> Unary:
        name = behavior.__qualname__

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = Call(self._method, self._row, context, name)
            response = None
            failure: BaseException | None = None
            try:
                request = await self._enter(call, request, streaming)
                token = current_caller.set(call.caller)
                try:
                    response = await self._committing(behavior, request, context)
                finally:
                    current_caller.reset(token)
            except Exception as exc:
                failure = exc
            except asyncio.CancelledError as exc:
                self._settle(call, exc)
                raise
            failure = self._settle(call, failure)
            if failure is not None:
                await self._boundary.answer(context, failure)
            return response

        return handle

    def _stream(self, behavior: Streaming, *, streaming: bool) -> Streaming:
        name = behavior.__qualname__

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = Call(self._method, self._row, context, name)
            try:
                request = await self._enter(call, request, streaming)
                # Not reset afterwards: each RPC runs in its own task (and so its own
                # context), and a closing generator may run its cleanup in another.
                current_caller.set(call.caller)
                responses = _responses(behavior(request, context))
                task = asyncio.current_task()
                if call.caller is not None and self._guard is not None and task is not None:
                    responses = _guarded(self._guard, call.caller, task, responses)
                async with contextlib.aclosing(responses) as each:
                    async for response in each:
                        yield response
            except Exception as exc:
                error = self._settle(call, exc)
                assert error is not None
                await self._boundary.answer(context, error)
            except (asyncio.CancelledError, GeneratorExit) as exc:
                self._settle(call, exc)  # the client went away, or the server is stopping
                raise
            else:
                error = self._settle(call, None)
                if error is not None:
                    await self._boundary.answer(context, error)

        return handle


async def _guarded(
    guard: StreamGuard, caller: Caller, task: asyncio.Task[Any], responses: AsyncGenerator[Any, None]
) -> AsyncGenerator[Any, None]:
    """A caller's stream, closed when its certificate is revoked.

    TLS and the per-call check act only on new calls; this one is cancelled by
    the revocation (GuardedStream) and ends with the status a new call would get.
    """
    stream = GuardedStream(task, caller.serial, caller.name)
    guard.register(stream)
    try:
        async with contextlib.aclosing(responses) as each:
            async for response in each:
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
        guard.unregister(stream)


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
