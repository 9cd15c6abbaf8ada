"""Derived reads that hot writes repeat (release authorizations, serials found unrevoked), kept
beside the connection (used by one thread at a time).

Cleared by every write that could change them (every write with a savepoint: only releases and
audit records skip it), by any rollback, and when
another connection has written (a tool, a restore), so a hit always equals
what the query would say. Bounded by starting over.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable
from typing import Any

__all__ = ["ReadCache"]

_SIZE = 10_000


class ReadCache:
    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._data_version: int | None = None

    def check(self, db: sqlite3.Connection) -> None:
        """At BEGIN: forgets everything if another connection wrote since the last check."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._values.clear()
            self._data_version = version

    def get(self, key: Hashable) -> Any:
        return self._values.get(key)

    def remember(self, key: Hashable, value: Any) -> None:
        if len(self._values) >= _SIZE:
            self._values.clear()
        self._values[key] = value

    def clear(self) -> None:
        self._values.clear()
