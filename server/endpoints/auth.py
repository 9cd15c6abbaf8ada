"""The interceptor of each listener: its middleware chain, around every handler (STYLE 10, 11).

Each listener (the mTLS port, the enrollment port, the admin socket) puts its
calls through one chain of small middlewares (server/endpoints/middleware.py),
driven by the method table (server/endpoints/methods.py): observe, map errors,
limit failures, report refusals, then authenticate, limit streams and
authorize. A method missing from the table is refused. The servicer reads the
caller from ``current_caller``. Address-based budgets apply only to refusals
of anonymous callers, never to a caller with a valid token or certificate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from server.endpoints.authn import PeerAuthenticator
from server.endpoints.chain import Chain, Settle, current_caller
from server.endpoints.failures import FailureReport
from server.endpoints.limits import Limits, peer_address
from server.endpoints.methods import METHODS, Listener, Role
from server.endpoints.middleware import (
    Authenticate,
    Authorize,
    LimitFailures,
    LimitStreams,
    LocalOnly,
    MapErrors,
    Middleware,
    Observe,
    ObserveStreams,
    ReportRefusals,
    Unlisted,
)
from server.ops.metrics import Metrics
from server.revocation.feed import StreamGuard

__all__ = ["AuthInterceptor", "Limits", "Listener", "Role", "current_caller"]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler of one listener in its middleware chain.

    Args:
        listener: which port (or socket) the server serves.
        authenticator, guard: the mTLS port's certificate check and stream registry.
        metrics: RPC counts and latencies.
        limits: address budgets for failed anonymous attempts, and streams per identity.
        report: where refusals are counted (a bounded log, aggregate audit records).
        peer: the real address of a gRPC peer string (the enrollment gate knows it
            for the connections it relays).
        settle: one worker's link to the others: a call that committed an event answers once
            every worker applied it (None: one process).
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
        settle: Settle | None = None,
    ) -> None:
        if listener is Listener.API and (authenticator is None or guard is None):
            raise ValueError("the API listener needs a PeerAuthenticator and a StreamGuard")
        self._guard = guard
        self._settle = settle
        self._boundary = MapErrors()
        chain: list[Middleware] = [Observe(metrics), ObserveStreams(metrics)] if metrics is not None else []
        chain.append(self._boundary)
        if limits is not None:
            chain.append(LimitFailures(limits, peer))
        if report is not None:
            chain.append(ReportRefusals(report, peer, audit_undecodable=listener is not Listener.API))
        chain.append(Unlisted())
        if listener is Listener.API:
            assert authenticator is not None and guard is not None
            chain.append(Authenticate(authenticator))
            if limits is not None:
                chain.append(LimitStreams(limits, guard))
        elif listener is Listener.ADMIN:
            chain.append(LocalOnly())
        chain.append(Authorize(listener))
        self._chain = chain
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
        row = METHODS.get(method)
        streams = bool(handler.unary_stream or handler.stream_stream)
        applied = [m for m in self._chain if m.applies(row, streams)]
        return Chain(method, row, applied, self._boundary, self._guard, self._settle).wrap(handler)
