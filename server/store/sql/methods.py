"""What SqlStore's mixins (one per concept: keys, the key scheduler) may call on SqlStore itself.

SqlStore (sql/store.py) defines them; the mixins only declare them here, once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from server.store.dialect import Backend, Body
from server.store.records import Audit, audit_entries

__all__ = ["Methods", "if_changed"]

T = TypeVar("T")


class Methods:
    _backend: Backend

    def _read(self, body: Body[T]) -> Awaitable[T]:
        raise NotImplementedError  # SqlStore's

    def _change(
        self, body: Body[T], audit_with: Audit = None, *, savepoint: bool = True, invalidates: bool = False
    ) -> Awaitable[T]:
        raise NotImplementedError  # SqlStore's


def if_changed(audit: Audit) -> Audit:
    """audit for a (record, event) result, and nothing when no event says something changed."""
    if audit is None:
        return None
    return lambda done: audit_entries(audit, done) if done[1] is not None else []
