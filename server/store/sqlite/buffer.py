"""Inserts deferred to a batch's end: one executemany per table just before COMMIT.

For rows no write of the batch reads (audit and release records). Each
statement crosses the GIL twice, and the event loop holds it between: one
statement per table instead of one per row is what keeps FetchKey cheap.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

__all__ = ["DeferredInserts"]

Mark = dict[str, int]


class DeferredInserts:
    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[Any, ...]]] = {}

    def add(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self._rows.setdefault(sql, []).extend(rows)

    def mark(self) -> Mark:
        """Where the buffer stands (before a step that may fail)."""
        return {sql: len(rows) for sql, rows in self._rows.items()}

    def rollback_to(self, mark: Mark) -> None:
        for sql, rows in self._rows.items():
            del rows[mark.get(sql, 0) :]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self._rows.get(sql, [])

    def flush(self, db: sqlite3.Connection) -> None:
        for sql, rows in self._rows.items():
            if rows:
                db.executemany(sql, rows)

    def clear(self) -> None:
        self._rows.clear()
