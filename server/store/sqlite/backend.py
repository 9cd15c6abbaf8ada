"""The SQLite backend: one worker thread owns the connection; writes are group-committed.

One thread, so writes are serialised without locks and the event loop never
blocks on an fsync. ``synchronous=FULL`` makes every committed transaction
durable before the awaiting RPC answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from server.store.dialect import Body, run_now
from server.store.records import AuditSink, StoreError
from server.store.sqlite import connection
from server.store.sqlite.commit import GroupCommit
from server.store.sqlite.tx import SqliteTx

__all__ = ["SqliteBackend"]

T = TypeVar("T")


class SqliteBackend:
    def __init__(self, executor: ThreadPoolExecutor, tx: SqliteTx, writer_lock: int | None = None) -> None:
        self._executor = executor
        self._tx: SqliteTx | None = tx
        self._writer_lock = writer_lock
        self.commits = GroupCommit(executor, tx, writer_lock)

    @classmethod
    async def open(cls, path: Path) -> SqliteBackend:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, connection.connect, path)
        except BaseException:
            executor.shutdown(wait=True)
            raise
        # Beside the store, 0600: the lock its batches take, one process at a time (commit.py).
        lock = os.open(path.with_name(path.name + ".writer"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        return cls(executor, SqliteTx(db), lock)

    async def close(self) -> None:
        self.commits.close()
        if self._tx is not None:
            await self._run(self._tx.raw.close)
            self._tx = None
        self._executor.shutdown(wait=True)
        if self._writer_lock is not None:
            os.close(self._writer_lock)
            self._writer_lock = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def tx(self) -> SqliteTx:
        if self._tx is None:
            raise StoreError("store is closed")
        return self._tx

    def read(self, body: Body[T]) -> Awaitable[T]:
        return self._run(lambda: run_now(body(self.tx)))  # type: ignore[arg-type]

    def write(self, body: Body[T], *, savepoint: bool = True, invalidates: bool = False) -> Awaitable[T]:
        return self.commits.write(
            lambda tx: run_now(body(tx)),  # type: ignore[arg-type]
            savepoint=savepoint,
            invalidates=invalidates,
        )

    async def erase(self) -> bool:
        return await self._run(self._erase)

    def _erase(self) -> bool:
        """The WAL scrubbed between two batches of any worker (their writes would keep it busy)."""
        if self._writer_lock is not None:
            fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        try:
            return connection.erase_wal(self.tx.raw)
        finally:
            if self._writer_lock is not None:
                fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    async def snapshot_to(self, target: Path) -> None:
        await self._run(lambda: connection.snapshot(self.tx.raw, target))

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Already exclusive: the data dir lock keeps every other server off this store (its
        workers share it, but only the primary runs what needs this: server/workers/)."""
        yield

    async def follow_events(self, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
        """Never wakes: one process publishes its own events as it commits them, and worker
        processes sharing the store are woken by their supervisor (server/workers/hub.py)."""
        connected(True)
        await asyncio.Event().wait()

    def copy_audit_to(self, sink: AuditSink | None) -> None:
        self.commits.sink = sink
