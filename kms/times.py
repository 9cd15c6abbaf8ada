"""Times as every command, log line, audit object and error message prints them: ISO 8601 in
UTC, to the second, with a Z."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["ISO_FORMAT", "iso", "iso_datetime"]

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(ts: int) -> str:
    """Unix seconds, e.g. 2027-06-30T00:00:00Z."""
    return datetime.fromtimestamp(ts, UTC).strftime(ISO_FORMAT)


def iso_datetime(at: datetime) -> str:
    """A datetime (e.g. a certificate's not_valid_after_utc) in UTC; a naive one is taken as UTC."""
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)).strftime(ISO_FORMAT)
