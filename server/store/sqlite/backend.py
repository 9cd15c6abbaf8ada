"""The SQLite backend: one store thread runs reads and most writes; writes are group-committed.

The connection is used by one thread at a time: the store thread, or the event loop
for a batch of releases and audit records while the store thread is idle (commit.py).
The loop never waits on an fsync: the WAL is synced by the store thread or by the WAL
syncer's process (walsync.py), and every committed transaction is durable before the
awaiting RPC answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from server.store.dialect import Body, run_now
from server.store.records import AuditSink, StoreError
from server.store.sqlite import connection
from server.store.sqlite.commit import COMMIT_PACE, GroupCommit
from server.store.sqlite.thread import StoreThread
from server.store.sqlite.tx import SqliteTx
from server.store.sqlite.walsync import WalSyncer

__all__ = ["SqliteBackend"]

T = TypeVar("T")


class SqliteBackend:
    def __init__(
        self,
        thread: StoreThread,
        tx: SqliteTx,
        path: Path,
        writer_lock: int | None = None,
        syncer: WalSyncer | None = None,
        workers: int = 1,
    ) -> None:
        self._thread = thread
        self._tx: SqliteTx | None = tx
        self._writer_lock = writer_lock
        self._syncer = syncer
        self.commits = GroupCommit(thread, tx, path, writer_lock, syncer, pace=COMMIT_PACE * workers)

    @classmethod
    async def open(cls, path: Path, *, workers: int = 1) -> SqliteBackend:
        thread = StoreThread()
        try:
            db = await thread.run(connection.connect, path)
        except BaseException:
            thread.shutdown()
            raise
        # Committed batches are synced by the store itself (commit.py), checkpoints run outside
        # a COMMIT (commit.py, walsync_process.py): a batch on the loop never waits on the disk.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        # Beside the store, 0600: the lock its batches take, one process at a time (commit.py).
        lock = os.open(path.with_name(path.name + ".writer"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        return cls(thread, SqliteTx(db), path, lock, WalSyncer.start(path), workers)

    async def close(self) -> None:
        await self.commits.close()
        if self._syncer is not None:  # first, so that this connection is the last to close
            self._syncer.close()
            self._syncer = None
        if self._tx is not None:
            await self._run(self._tx.raw.close)
            self._tx = None
        self._thread.shutdown()
        if self._writer_lock is not None:
            os.close(self._writer_lock)
            self._writer_lock = None

    def _run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return self._thread.run(fn, *args)

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
