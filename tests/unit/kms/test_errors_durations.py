"""kms/errors.py and kms/durations.py."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from kms import errors
from kms.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "cls",
    [
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
    ],
)
def test_status_round_trip(cls: type[errors.KmsError]) -> None:
    back = errors.error_for_status(cls.code, "what to do")
    assert type(back) is cls and back.message == "what to do"


def test_exit_codes_are_distinct() -> None:
    classes = errors.KmsError.__subclasses__()
    assert len({c.exit_code for c in classes}) == len(classes)
    assert all(c.exit_code != 0 for c in [errors.KmsError, *classes])


def test_unknown_status_is_generic() -> None:
    assert type(errors.error_for_status(grpc.StatusCode.UNKNOWN, "")) is errors.KmsError


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "m", "0s", "-1m", "1.5h", "1w", "15 minutes"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        parse_duration(text)
