"""One error hierarchy for server, agent and CLI.

Each class carries the gRPC status code the server answers with and the exit
code the CLI ends with, so the mapping lives here and nowhere else. Messages
say what to do next; they never carry secrets.
"""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyExists",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "KmsError",
    "NotFound",
    "PermissionDenied",
    "REVOKED_MARK",
    "STORE_DOWN_MARK",
    "ResourceExhausted",
    "Revoked",
    "Unauthenticated",
    "Unavailable",
    "error_for_status",
]


class KmsError(Exception):
    """Base of every error Seed KMS reports to a caller or an operator."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(KmsError):
    """The request or the command line is malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    exit_code = 2


class Unauthenticated(KmsError):
    """No identity, or an invalid, expired, revoked or unknown one (tokens too)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    exit_code = 3


class Revoked(Unauthenticated):
    """The caller's own certificate (or agent) was revoked. Its messages contain REVOKED_MARK."""

    exit_code = 11


REVOKED_MARK = "was revoked"

# In the message of an UNAVAILABLE a server sends when its database is down: the
# server itself answered, so clients must not report it as unreachable.
STORE_DOWN_MARK = "the database is not reachable from this kms-server"


class PermissionDenied(KmsError):
    """The identity is known but not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    exit_code = 4


class NotFound(KmsError):
    code = grpc.StatusCode.NOT_FOUND
    exit_code = 5


class FailedPrecondition(KmsError):
    """The object is in the wrong state, or local state is missing or unusable."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    exit_code = 6


class ResourceExhausted(KmsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    exit_code = 7


class Unavailable(KmsError):
    """The server cannot be reached (or is not running)."""

    code = grpc.StatusCode.UNAVAILABLE
    exit_code = 8


class AlreadyExists(KmsError):
    code = grpc.StatusCode.ALREADY_EXISTS
    exit_code = 9


class DeadlineExceeded(KmsError):
    """A step did not happen in time (a stalled exchange, a silent peer)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    exit_code = 12


class DataLoss(KmsError):
    """Data does not authenticate: damaged, truncated, or not ours. One opaque message."""

    code = grpc.StatusCode.DATA_LOSS
    exit_code = 10


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


def error_for_status(code: grpc.StatusCode, message: str) -> KmsError:
    """Maps a gRPC status back to the error class the server raised.

    Args:
        code: the status code of a failed call.
        message: its details string.

    Returns:
        An instance of the matching KmsError subclass (KmsError for codes we
        do not raise ourselves, such as INTERNAL or DEADLINE_EXCEEDED).
    """
    cls = _BY_CODE.get(code, KmsError)
    if cls is Unauthenticated and REVOKED_MARK in message:
        cls = Revoked
    return cls(message or code.name.lower())
