"""One error hierarchy for server, agent and CLI.

Each class carries the gRPC status code the server answers with, the exit
code the CLI ends with, and a reason: a short machine-readable name that the
server's error boundary sends in the trailing metadata (``REASON_KEY``), so a
client tells a revoked caller from an unknown one, or a server whose database
is down from one that does not answer, without reading the message.
``from_rpc_error`` maps a failed call back to the class raised. Messages say
what to do next; they never carry secrets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import grpc

__all__ = [
    "AlreadyExists",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Held",
    "InvalidArgument",
    "KeyDisabled",
    "WrongKeyType",
    "KeyExpired",
    "KmsError",
    "NotFound",
    "PermissionDenied",
    "REASON_KEY",
    "ResourceExhausted",
    "Revoked",
    "StoreDown",
    "Unauthenticated",
    "Unavailable",
    "error_for_status",
    "from_rpc_error",
    "reason_of",
]

# The trailing metadata key that carries an error's reason.
REASON_KEY = "kms-reason"


class KmsError(Exception):
    """Base of every error Seed KMS reports to a caller or an operator."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    exit_code: int = 1
    reason: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(KmsError):
    """The request or the command line is malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    exit_code = 2
    reason = "invalid-argument"


class Unauthenticated(KmsError):
    """No identity, or an invalid, expired, revoked or unknown one (tokens too)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    exit_code = 3
    reason = "unauthenticated"


class Revoked(Unauthenticated):
    """The caller's own certificate (or agent) was revoked."""

    exit_code = 11
    reason = "revoked"


class Held(Revoked):
    """The caller's certificate is on hold (RFC 5280 certificateHold): refused until released."""

    exit_code = 13
    reason = "held"


class PermissionDenied(KmsError):
    """The identity is known but not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    exit_code = 4
    reason = "permission-denied"


class NotFound(KmsError):
    code = grpc.StatusCode.NOT_FOUND
    exit_code = 5
    reason = "not-found"


class FailedPrecondition(KmsError):
    """The object is in the wrong state, or local state is missing or unusable."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    exit_code = 6
    reason = "failed-precondition"


class KeyDisabled(FailedPrecondition):
    """The key is disabled by its administrator: nothing of it is released until it is enabled."""

    reason = "key-disabled"


class KeyExpired(FailedPrecondition):
    """The key has expired: its versions may still decrypt, none may encrypt (KMIP Deactivated)."""

    reason = "key-expired"


class ResourceExhausted(KmsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    exit_code = 7
    reason = "resource-exhausted"


class Unavailable(KmsError):
    """The server cannot be reached (or is not running)."""

    code = grpc.StatusCode.UNAVAILABLE
    exit_code = 8
    reason = "unavailable"


class StoreDown(Unavailable):
    """The server answered, but cannot reach its database: another replica may (clients fail over)."""

    reason = "store-down"


class AlreadyExists(KmsError):
    code = grpc.StatusCode.ALREADY_EXISTS
    exit_code = 9
    reason = "already-exists"


class DeadlineExceeded(KmsError):
    """A step did not happen in time (a stalled exchange, a silent peer)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    exit_code = 12
    reason = "deadline-exceeded"


class DataLoss(KmsError):
    """Data does not authenticate: damaged, truncated, or not ours. One opaque message."""

    code = grpc.StatusCode.DATA_LOSS
    exit_code = 10
    reason = "data-loss"


class WrongKeyType(FailedPrecondition):
    """An operation for AES keys asked of a key pair, or one for key pairs asked of an AES key."""

    reason = "wrong-key-type"


_BY_CODE: dict[grpc.StatusCode, type[KmsError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        AlreadyExists,
        DataLoss,
        DeadlineExceeded,
    )
}
# Every class by its reason: these refine their code's class.
_REFINED: tuple[type[KmsError], ...] = (Revoked, Held, StoreDown, KeyDisabled, WrongKeyType, KeyExpired)
_BY_REASON: dict[str, type[KmsError]] = {cls.reason: cls for cls in (*_REFINED, *_BY_CODE.values())}


def reason_of(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The reason a failed call's trailing metadata carries, if any."""
    for key, value in trailing_metadata or ():
        if key == REASON_KEY:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None


def from_rpc_error(
    code: grpc.StatusCode,
    details: str | None,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None = None,
) -> KmsError:
    """Maps a failed call back to the error class the server raised.

    The reason in the trailing metadata picks the class when it names one of
    the call's status code (Revoked for UNAUTHENTICATED, StoreDown for
    UNAVAILABLE); an unknown reason, a reason of another code or none at all
    (a peer that sent none, or gRPC itself) leaves the class of the code.

    Args:
        code: the status code of a failed call.
        details: its details string.
        trailing_metadata: its trailing metadata ((key, value) pairs), if any.

    Returns:
        An instance of the matching KmsError subclass (KmsError for codes we
        do not raise ourselves, such as INTERNAL or CANCELLED).
    """
    cls = _BY_REASON.get(reason_of(trailing_metadata) or "")
    if cls is None or cls.code != code:
        cls = _BY_CODE.get(code, KmsError)
    return cls(details or code.name.lower())


def error_for_status(code: grpc.StatusCode, message: str) -> KmsError:
    """from_rpc_error for a status without trailing metadata."""
    return from_rpc_error(code, message)
