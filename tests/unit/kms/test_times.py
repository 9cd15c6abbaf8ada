"""kms.times: the one way times are printed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kms.times import iso, iso_datetime, relative, span


def test_unix_seconds_and_datetimes_print_in_utc_to_the_second() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(1_814_313_600) == "2027-06-30T00:00:00Z"
    east = datetime(2027, 6, 30, 2, 0, 0, 900_000, tzinfo=timezone(timedelta(hours=2)))
    assert iso_datetime(east) == "2027-06-30T00:00:00Z"
    assert iso_datetime(datetime(2027, 6, 30)) == "2027-06-30T00:00:00Z"  # naive: taken as UTC


NOW = 1_814_313_600


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        pytest.param(0, "now", id="now"),
        pytest.param(1, "in 1 s", id="one-second"),
        pytest.param(-59, "59 s ago", id="seconds"),
        pytest.param(60, "in 1 min", id="a-minute"),
        pytest.param(-(3599), "59 min ago", id="minutes-round-down"),
        pytest.param(3600, "in 1 h", id="an-hour"),
        pytest.param(-2 * 3600 - 1799, "2 h ago", id="hours"),
        pytest.param(47 * 3600, "in 47 h", id="under-two-days-in-hours"),
        pytest.param(2 * 86_400, "in 2 d", id="two-days"),
        pytest.param(3 * 86_400 + 80_000, "in 3 d", id="days-round-down"),
        pytest.param(-729 * 86_400, "729 d ago", id="under-two-years-in-days"),
        pytest.param(10 * 365 * 86_400, "in 10 y", id="years"),
    ],
)
def test_relative_times_read_at_a_glance(offset: int, text: str) -> None:
    assert relative(NOW + offset, NOW) == text


def test_a_span_is_its_absolute_length() -> None:
    assert span(-90) == span(90) == "1 min"
