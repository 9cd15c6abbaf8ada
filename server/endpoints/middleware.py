"""The small middlewares every RPC passes through, each driven by its method's row (server/endpoints/methods.py).

As in SPIRE's api/middleware, each does one job: ``before`` the handler (it
refuses by raising a KmsError) and/or ``after`` it (it sees the outcome and
may answer with another error). server/endpoints/chain.py runs them: the
befores in chain order, then the handler, then the afters in reverse. A
listener's chain, outermost first (server/endpoints/auth.py):

- Observe (unary calls), ObserveStreams (streams): started, finished with the status code
  sent, and duration, per method; the row's counter on an OK unary answer;
- MapErrors: the error boundary: a KmsError answers with its code, its message and
  its reason in the trailing metadata (REASON_KEY), anything else with INTERNAL
  without detail (logged with its traceback);
- LimitFailures: a failed anonymous attempt draws on its address's budgets; over
  budget, the answer is RESOURCE_EXHAUSTED instead;
- ReportRefusals: refusals counted per peer address (server/endpoints/failures.py);
- Unlisted: a method without a row is refused, whoever calls;
- Authenticate (the mTLS port) or LocalOnly (the admin socket): who is calling;
- LimitStreams: the streams one agent holds open;
- Authorize: whether the row's role may call on this listener.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from kms.errors import (
    REASON_KEY,
    KmsError,
    PermissionDenied,
    Unauthenticated,
)
from server.endpoints.authn import Caller, PeerAuthenticator
from server.endpoints.decoding import Undecodable
from server.endpoints.failures import FailureReport
from server.endpoints.limits import AnonymousFailure, Limits
from server.endpoints.methods import Counter, Listener, Method, Role
from server.ops.metrics import Metrics
from server.revocation.feed import StreamGuard

__all__ = [
    "Authenticate",
    "Authorize",
    "Call",
    "LimitFailures",
    "LimitStreams",
    "LocalOnly",
    "MapErrors",
    "Middleware",
    "Observe",
    "ObserveStreams",
    "ReportRefusals",
    "Unlisted",
]

logger = logging.getLogger(__name__)

_INTERNAL = "internal error: the server log has the details"


class Call:
    """One RPC as the middlewares see it: its method and row, and what the befores learnt."""

    __slots__ = ("caller", "context", "handler", "method", "row", "started")

    def __init__(
        self, method: str, row: Method | None, context: grpc.aio.ServicerContext, handler: str
    ) -> None:
        self.method = method
        self.row = row
        self.context = context
        self.handler = handler  # the servicer's function, for the log
        self.caller: Caller | None = None
        self.started = time.perf_counter()  # for Observe: one clock read, no step of its own


class Middleware:
    """One job around every call of the methods it applies to; both steps do nothing here."""

    # Whether ``after`` has anything to do when the handler answered (no error): the chain
    # skips it on that path otherwise (server/endpoints/chain.py).
    after_success = True

    def applies(self, row: Method | None, streams: bool) -> bool:
        """Whether a method (its row, and whether its handler streams responses) passes through this one."""
        return row is not None

    async def before(self, call: Call) -> None:
        """Runs before the handler; raises a KmsError to refuse the call."""

    def after(self, call: Call, error: BaseException | None) -> BaseException | None:
        """Runs after the handler (or a refusal); returns the error to answer with (None: the response)."""
        return error


class Observe(Middleware):
    """Unary RPCs: count and latency by method and the code sent; an OK answer increments its row's counter."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._counters = {
            Counter.ENROLLMENTS: metrics.enrollments,
            Counter.KEY_RELEASES: metrics.key_releases,
        }

    def applies(self, row: Method | None, streams: bool) -> bool:
        return not streams

    def after(self, call: Call, error: BaseException | None) -> BaseException | None:
        code = _code_of(call, error)
        counter = None
        if code is grpc.StatusCode.OK and call.row is not None and call.row.counter is not None:
            counter = self._counters[call.row.counter]
        # A unary call is counted as started when it ends.
        self._metrics.unary_done(call.method, code.name, time.perf_counter() - call.started, counter)
        return error


class ObserveStreams(Observe):
    """Streaming RPCs: counted when they open, and when they end with the code sent and their lifetime."""

    def applies(self, row: Method | None, streams: bool) -> bool:
        return streams

    async def before(self, call: Call) -> None:
        self._metrics.rpc_started(call.method)

    def after(self, call: Call, error: BaseException | None) -> BaseException | None:
        code = _code_of(call, error)
        self._metrics.observe_rpc(call.method, code.name, time.perf_counter() - call.started)
        return error


def _code_of(call: Call, error: BaseException | None) -> grpc.StatusCode:
    """The status code the client gets."""
    if isinstance(error, KmsError):
        return error.code
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    # None: the handler answered, perhaps with a code it set (context.set_code); an
    # AbortError: the handler aborted the call itself (grpc_health's NOT_FOUND), with that code.
    code: grpc.StatusCode | None = call.context.code()
    if code is not None:
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


class MapErrors(Middleware):
    """The error boundary (STYLE 11): every error becomes a KmsError, answered by ``answer``."""

    after_success = False

    def applies(self, row: Method | None, streams: bool) -> bool:
        return True

    def after(self, call: Call, error: BaseException | None) -> BaseException | None:
        if error is None or isinstance(error, grpc.aio.AbortError | asyncio.CancelledError | GeneratorExit):
            return error
        if isinstance(error, KmsError):
            return error
        logger.error("unhandled error in %s", call.handler, exc_info=error)
        return KmsError(_INTERNAL)

    async def answer(self, context: grpc.aio.ServicerContext, error: BaseException) -> None:
        """Ends the call with the error's status and reason (raises grpc.aio.AbortError)."""
        if not isinstance(error, KmsError):
            raise error  # the handler's own abort, or a cancellation: already decided
        await context.abort(error.code, error.message, trailing_metadata=((REASON_KEY, error.reason),))


class LimitFailures(Middleware):
    """Failed anonymous attempts draw on their address's budgets; over budget, RESOURCE_EXHAUSTED answers."""

    after_success = False

    def __init__(self, limits: Limits, peer: Callable[[str], str]) -> None:
        self._limits = limits
        self._peer = peer

    def applies(self, row: Method | None, streams: bool) -> bool:
        return True

    def after(self, call: Call, error: BaseException | None) -> BaseException | None:
        if not (isinstance(error, AnonymousFailure) and isinstance(error, KmsError)):
            return error
        budget = call.row.budget if call.row is not None else None
        return self._limits.over_budget(budget, self._peer(call.context.peer()), error) or error


class ReportRefusals(Middleware):
    """Counts refused anonymous attempts, refused certificates and undecodable requests per peer address.

    Args:
        audit_undecodable: whether an undecodable request is audited (on the mTLS
            port it comes from a valid agent: logged, not audited).
    """

    after_success = False

    def __init__(self, report: FailureReport, peer: Callable[[str], str], *, audit_undecodable: bool) -> None:
        self._report = report
        self._peer = peer
        self._audit_undecodable = audit_undecodable

    def applies(self, row: Method | None, streams: bool) -> bool:
        return True

    def after(self, call: Call, error: BaseException | None) -> BaseException | None:
        if not isinstance(error, KmsError):
            return error
        anonymous = isinstance(error, AnonymousFailure)
        if anonymous or isinstance(error, Unauthenticated | Undecodable):
            audited = self._audit_undecodable or not isinstance(error, Undecodable)
            kind = getattr(error, "kind", "bad-certificate")
            detail = f"{call.method}: {_detail(error)}"
            self._report.note(self._peer(call.context.peer()), kind, detail, anonymous=audited)
        return error


def _detail(exc: KmsError) -> str:
    """What the log says of a refusal: the message, and the token's id (never its secret) if any."""
    token_id = getattr(exc, "token_id", None)
    return f"{exc.message} (token {token_id})" if token_id else exc.message


class Unlisted(Middleware):
    """Fails closed: a method missing from the table is refused, whoever calls."""

    def applies(self, row: Method | None, streams: bool) -> bool:
        return row is None

    async def before(self, call: Call) -> None:
        logger.error("refused %s: method is missing from the method table", call.method)
        raise PermissionDenied(f"{call.method} is not allowed for anyone on this server")


class Authenticate(Middleware):
    """The mTLS port: a peer certificate names the caller, checked on every call (None: no certificate)."""

    def __init__(self, authenticator: PeerAuthenticator) -> None:
        self._authenticator = authenticator

    async def before(self, call: Call) -> None:
        peer_pem = call.context.auth_context().get("x509_pem_cert")
        if peer_pem:
            call.caller = await self._authenticator.authenticate(peer_pem[0])


class LocalOnly(Middleware):
    """The admin socket: only local credentials (the 0600 UNIX socket) reach it."""

    async def before(self, call: Call) -> None:
        if call.context.auth_context().get("transport_security_type") != [b"local"]:
            raise PermissionDenied(f"{call.method} is not an admin method")


class LimitStreams(Middleware):
    """An agent opens a stream only while it holds fewer than the limit, all its certificates together."""

    def __init__(self, limits: Limits, guard: StreamGuard) -> None:
        self._limits = limits
        self._guard = guard

    def applies(self, row: Method | None, streams: bool) -> bool:
        return row is not None and row.streams

    async def before(self, call: Call) -> None:
        if call.caller is not None:
            self._limits.check_streams(self._guard.open_streams(call.caller.name))


class Authorize(Middleware):
    """Whether the row's role may call on this listener."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    async def before(self, call: Call) -> None:
        assert call.row is not None  # Unlisted refused it otherwise
        role = call.row.role
        if self._listener is Listener.ADMIN:
            if role is not Role.ADMIN:
                raise PermissionDenied(f"{call.method} is not an admin method")
        elif self._listener is Listener.ENROLL:
            # Only Role.ANYONE methods are registered there; this is the fail-closed backstop.
            if role is not Role.ANYONE:
                raise PermissionDenied(f"{call.method} is not served on the enrollment address")
        elif role is Role.AGENT and call.caller is None:
            raise Unauthenticated(
                f"{call.method} needs the agent's client certificate: call the mTLS address, not the enrollment one"
            )
        elif role is Role.ADMIN:
            raise PermissionDenied(f"{call.method} is not allowed on this listener")
