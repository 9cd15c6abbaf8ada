"""kms/errors.py: from_rpc_error maps a failed call back by its code and the reason in its trailing metadata."""

from __future__ import annotations

import grpc
import pytest

from kms import errors

CODE_CLASSES = [
    errors.InvalidArgument,
    errors.Unauthenticated,
    errors.PermissionDenied,
    errors.NotFound,
    errors.FailedPrecondition,
    errors.ResourceExhausted,
    errors.Unavailable,
    errors.AlreadyExists,
    errors.DataLoss,
    errors.DeadlineExceeded,
]


def _trailer(reason: str | bytes) -> tuple[tuple[str, str | bytes], ...]:
    return (("other-key", "x"), (errors.REASON_KEY, reason))


@pytest.mark.parametrize("cls", CODE_CLASSES, ids=lambda c: c.__name__)
def test_each_code_without_metadata_gives_its_class(cls: type[errors.KmsError]) -> None:
    back = errors.from_rpc_error(cls.code, "what to do")
    assert type(back) is cls and back.message == "what to do"


@pytest.mark.parametrize(
    "cls",
    [*CODE_CLASSES, errors.Revoked, errors.Held, errors.StoreDown, errors.KeyDisabled, errors.KeyExpired],
    ids=lambda c: c.__name__,
)
def test_each_reason_with_its_code_gives_its_class(cls: type[errors.KmsError]) -> None:
    back = errors.from_rpc_error(cls.code, "what to do", _trailer(cls.reason))
    assert type(back) is cls and back.message == "what to do" and back.exit_code == cls.exit_code


@pytest.mark.parametrize(
    "cls, code",
    [(errors.Revoked, grpc.StatusCode.UNAUTHENTICATED), (errors.StoreDown, grpc.StatusCode.UNAVAILABLE)],
)
def test_the_message_plays_no_part(cls: type[errors.KmsError], code: grpc.StatusCode) -> None:
    # The old marks in the text, without the reason: the code's class, not the refinement.
    text = "certificate 1f was revoked; the database is not reachable from this kms-server"
    assert type(errors.from_rpc_error(code, text)) is cls.__mro__[1]
    assert type(errors.from_rpc_error(code, "short", _trailer(cls.reason))) is cls


def test_reason_as_bytes_is_read() -> None:
    back = errors.from_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "gone", _trailer(b"revoked"))
    assert type(back) is errors.Revoked


def test_unknown_reason_falls_back_to_the_code() -> None:
    back = errors.from_rpc_error(
        grpc.StatusCode.UNAVAILABLE, "later", _trailer("a-reason-from-a-newer-server")
    )
    assert type(back) is errors.Unavailable and back.message == "later"


def test_reason_of_another_code_is_ignored() -> None:
    # A reason that does not belong to the status code cannot turn a refusal into another error.
    back = errors.from_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "no", _trailer("revoked"))
    assert type(back) is errors.PermissionDenied
    back = errors.from_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "no", _trailer("store-down"))
    assert type(back) is errors.Unauthenticated


@pytest.mark.parametrize("metadata", [None, (), (("kms-other", "revoked"),)])
def test_no_reason(metadata: tuple[tuple[str, str], ...] | None) -> None:
    back = errors.from_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "who?", metadata)
    assert type(back) is errors.Unauthenticated


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN]
)
def test_codes_we_never_raise_are_generic(code: grpc.StatusCode) -> None:
    back = errors.from_rpc_error(code, "", _trailer("internal"))
    assert type(back) is errors.KmsError and back.message == code.name.lower()


def test_reasons_are_distinct() -> None:
    classes = [
        *CODE_CLASSES,
        errors.Revoked,
        errors.Held,
        errors.StoreDown,
        errors.KeyDisabled,
        errors.KeyExpired,
        errors.KmsError,
    ]
    assert len({c.reason for c in classes}) == len(classes)
