"""Reading and checking the audit trail (appends happen in the store, with each action)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from kms.audit import AuditRecord, first_break
from kms.errors import InvalidArgument
from server.store import Store

__all__ = ["AuditTrail"]

_PAGE = 1000


class AuditTrail:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def records(self, after_seq: int = 0) -> AsyncIterator[AuditRecord]:
        if after_seq < 0:
            raise InvalidArgument("--since must be 0 or a sequence number")
        while page := await self._store.audit_after(after_seq, _PAGE):
            for record in page:
                yield record
            after_seq = page[-1].seq

    async def verify(self) -> tuple[int | None, int]:
        """(first bad sequence number or None, number of records read)."""
        records = [r async for r in self.records()]
        return first_break(records), len(records)
