"""What the one SQL store (server/store/sql/) asks of a database: a transaction, and a backend.

Every transaction is written once, as a coroutine over a ``Tx``, in SQL that
SQLite (3.35 and later) and PostgreSQL both accept: ``?`` placeholders,
``ON CONFLICT`` upserts, ``RETURNING``, ``WITH RECURSIVE``. What differs hides
behind the Tx, as SPIRE's sqlstore keeps one datastore over its dialects:

- placeholders: ``$1, $2, ...`` on PostgreSQL;
- row locks (``FOR UPDATE`` and its kin, via ``locked``) and advisory locks
  (a certificate's, the audit chain's): taken on PostgreSQL, where replicas
  race; nothing on SQLite, whose one thread runs every write;
- event sequence numbers: a counter row (and a NOTIFY) on PostgreSQL, the
  rowid on SQLite;
- inserts no later step reads (release records, audit records): SQLite defers
  them to its batch's end, PostgreSQL runs them at once;
- derived reads: cached on SQLite (its one writer sees every change), never
  on PostgreSQL (another replica may have written).

A ``Backend`` keeps only connection handling and commit strategy: SQLite's
thread and group commit, PostgreSQL's pool, retries and wake-ups.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kms.audit import AuditRecord
from server.store.records import AuditSink

__all__ = ["Backend", "Body", "Tx", "run_now"]

T = TypeVar("T")


class Tx(Protocol):
    """One transaction (or, for reads, one connection) of a backend. Rows index like tuples."""

    raw: Any  # the driver's connection: for steps only one backend has, and tests
    # The audit chain's newest (seq, hash) as this transaction knows it (see sql/audit.py).
    chain_head: tuple[int, bytes] | None
    insert_order: str  # the column that orders a table's rows by insertion

    def locked(self, sql: str, clause: str) -> str:
        """sql locking the rows it reads with clause ("FOR UPDATE", "FOR SHARE", ...) where rows need
        locks; sql itself where they do not."""
        ...

    async def fetchrow(self, sql: str, *args: Any) -> Any: ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Runs sql; returns how many rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None: ...

    async def insert_later(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Inserts rows into a table no later step of the transaction reads."""
        ...

    async def insert_event(self, row: tuple[Any, ...]) -> int:
        """Inserts an event (every column but seq, in order); returns its seq."""
        ...

    async def lock_certificates(self, serials: list[str], *, shared: bool = False) -> None:
        """Until COMMIT: exclusive to revoke, shared to release (postgres/tx.py says why)."""
        ...

    async def lock_key(self, name: str) -> None:
        """Until COMMIT, alone: the key's release is this transaction's to stop or resume."""
        ...

    async def lock_release(self, serial: str, key: str) -> None:
        """Until COMMIT, shared: the caller's certificate and the key, for one release."""
        ...

    async def lock_chain(self) -> None:
        """Until COMMIT: the audit chain's head is this transaction's to extend."""
        ...

    def appended(self, records: list[AuditRecord]) -> None:
        """Audit records this transaction inserted (copied to the audit devices once committed)."""
        ...

    def cached(self, key: Hashable) -> Any:
        """A derived read remembered earlier, or None."""
        ...

    def remember(self, key: Hashable, value: Any) -> None: ...


# A transaction's body.
Body = Callable[[Tx], Awaitable[T]]


class Backend(Protocol):
    def read(self, body: Body[T]) -> Awaitable[T]: ...

    def write(self, body: Body[T], *, savepoint: bool = True, invalidates: bool = False) -> Awaitable[T]:
        """Runs body in a transaction; returns once it is durable.

        savepoint False: body only reads and inserts later, so it needs no
        savepoint of its own (SQLite). invalidates: body changes what derived
        reads depend on (keys, grants, versions): the cache is cleared first.
        """
        ...

    async def erase(self) -> bool:
        """Scrubs destroyed material's old bytes; False when another process keeps them for now."""
        ...

    async def snapshot_to(self, target: Path) -> None: ...

    def exclusive(self) -> AbstractAsyncContextManager[None]: ...

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None: ...

    def copy_audit_to(self, sink: AuditSink | None) -> None: ...

    async def close(self) -> None: ...


def run_now(step: Coroutine[Any, Any, T]) -> T:
    """Runs a transaction body that never suspends (SQLite's Tx: plain calls on its thread) to its end."""
    try:
        step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    step.close()
    raise RuntimeError("a SQLite transaction step waited on something")
