"""kms.times: the one way times are printed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kms.times import iso, iso_datetime


def test_unix_seconds_and_datetimes_print_in_utc_to_the_second() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(1_814_313_600) == "2027-06-30T00:00:00Z"
    east = datetime(2027, 6, 30, 2, 0, 0, 900_000, tzinfo=timezone(timedelta(hours=2)))
    assert iso_datetime(east) == "2027-06-30T00:00:00Z"
    assert iso_datetime(datetime(2027, 6, 30)) == "2027-06-30T00:00:00Z"  # naive: taken as UTC
