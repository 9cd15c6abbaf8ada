"""server/store/sqlite: where a batch commits (the event loop or the store thread), the WAL
syncer's process, and the WAL checkpoints that replace SQLite's own."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from server.store import SqliteStore
from server.store.sqlite.walsync_process import CHECKPOINT_BYTES
from tests.unit.server.conftest import hold_store_thread


def _insert_meta(key: str, value: str = "v") -> Callable[[sqlite3.Connection], int]:
    def fn(db: sqlite3.Connection) -> int:
        db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
        return threading.get_ident()

    return fn


def test_light_writes_commit_on_the_loop_others_on_the_store_thread(tmp_path: Path) -> None:
    """A batch with no savepoint runs where it was asked for (the loop) when the store thread is
    idle; a write with a savepoint, or any batch while the thread is busy, runs on the thread."""

    async def body() -> tuple[int, int, int, int]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            loop_thread = threading.get_ident()
            light = await store._write(_insert_meta("a"), savepoint=False)
            heavy = await store._write(_insert_meta("b"))
            go = hold_store_thread(store)
            queued = asyncio.ensure_future(store._write(_insert_meta("c"), savepoint=False))
            await asyncio.sleep(0.05)
            go.set()
            behind = await queued
            return loop_thread, light, heavy, behind
        finally:
            await store.close()

    loop_thread, light, heavy, behind = asyncio.run(body())
    assert light == loop_thread
    assert heavy != loop_thread and behind != loop_thread
    conn = sqlite3.connect(tmp_path / "kms.db")
    assert {r[0] for r in conn.execute("SELECT key FROM meta WHERE key IN ('a', 'b', 'c')")} == {
        "a",
        "b",
        "c",
    }


def test_a_dead_syncer_leaves_the_store_thread_to_commit_and_sync(tmp_path: Path) -> None:
    """Killing the WAL syncer's process loses no acknowledged write: the batch it was syncing,
    and every later one, is synced by the store thread."""

    async def body() -> tuple[int, bool]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            syncer = store._backend._syncer
            assert syncer is not None and not syncer.broken
            loop_thread = threading.get_ident()
            assert await store._write(_insert_meta("before"), savepoint=False) == loop_thread
            os.kill(syncer._proc.pid, signal.SIGKILL)
            syncer._proc.wait(5)
            await asyncio.wait_for(store._write(_insert_meta("during"), savepoint=False), 5)
            after = await asyncio.wait_for(store._write(_insert_meta("after"), savepoint=False), 5)
            return after != loop_thread, syncer.broken
        finally:
            await store.close()

    on_thread, broken = asyncio.run(body())
    assert on_thread and broken
    conn = sqlite3.connect(tmp_path / "kms.db")
    keys = {r[0] for r in conn.execute("SELECT key FROM meta")}
    assert {"before", "during", "after"} <= keys


def test_the_wal_is_checkpointed_though_sqlite_no_longer_does_it_in_a_commit(tmp_path: Path) -> None:
    """The store turns SQLite's autocheckpoint off (a COMMIT on the loop must not copy pages and
    fsync); the syncer's process and the store thread checkpoint instead, so the WAL stays near
    CHECKPOINT_BYTES (plus what is written while a checkpoint runs) while six times that is
    written, on either path."""
    blob = "x" * 100_000

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            for i in range(120):  # 12 MB, on the loop
                await store._write(_insert_meta(f"l{i}", blob), savepoint=False)
            for i in range(120):  # and 12 MB more, on the store thread
                await store._write(_insert_meta(f"t{i}", blob))
            assert (tmp_path / "kms.db-wal").stat().st_size < 3 * CHECKPOINT_BYTES
        finally:
            await store.close()

    asyncio.run(body())
    conn = sqlite3.connect(tmp_path / "kms.db")
    assert conn.execute("SELECT count(*) FROM meta WHERE key GLOB '[lt][0-9]*'").fetchone()[0] == 240


def test_the_syncer_process_ends_with_the_store(tmp_path: Path) -> None:
    async def body() -> int:
        store = await SqliteStore.open(tmp_path / "kms.db")
        syncer = store._backend._syncer
        assert syncer is not None
        await store.close()
        return syncer._proc.returncode

    assert asyncio.run(body()) == 0


def test_worker_processes_pace_their_batches_together(tmp_path: Path) -> None:
    """Each of N workers sharing the store paces at N times COMMIT_PACE: the store as a whole
    syncs about as often as one process would."""
    from server.store.sqlite.commit import COMMIT_PACE

    async def body() -> tuple[float, float]:
        one = await SqliteStore.open(tmp_path / "one.db")
        three = await SqliteStore.open(tmp_path / "three.db", workers=3)
        try:
            return one._backend.commits.pace, three._backend.commits.pace
        finally:
            await one.close()
            await three.close()

    assert asyncio.run(body()) == (COMMIT_PACE, 3 * COMMIT_PACE)


def test_a_write_on_the_loop_is_acknowledged_only_once_the_syncer_answers(tmp_path: Path) -> None:
    """Stopping the syncer's process holds the acknowledgement (the WAL is not known to be on
    disk); it comes as soon as the process runs again."""

    async def body() -> tuple[bool, int]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            syncer = store._backend._syncer
            assert syncer is not None
            os.kill(syncer._proc.pid, signal.SIGSTOP)
            try:
                write = asyncio.ensure_future(store._write(_insert_meta("held"), savepoint=False))
                await asyncio.sleep(0.3)
                held = not write.done()
            finally:
                os.kill(syncer._proc.pid, signal.SIGCONT)
            return held, await asyncio.wait_for(write, 5)
        finally:
            await store.close()

    held, thread = asyncio.run(body())
    assert held and thread == threading.get_ident()


def test_with_audit_devices_every_batch_commits_on_the_store_thread(tmp_path: Path) -> None:
    """The devices' copy (an fsync'd file) is made under the writer lock before the batch is
    acknowledged: the store thread's work, so light writes do not run on the loop then."""
    from kms.audit import AuditRecord
    from server.store import AuditEntry

    copied: list[AuditRecord] = []

    class Sink:
        def write(self, records: Sequence[AuditRecord]) -> None:
            copied.extend(records)

    async def body() -> int:
        store = await SqliteStore.open(tmp_path / "kms.db")
        store._backend.copy_audit_to(Sink())
        try:
            await store.append_audit(AuditEntry(1, "admin", "t", "o"))
            return await store._write(_insert_meta("x"), savepoint=False)
        finally:
            await store.close()

    where = asyncio.run(body())
    assert where != threading.get_ident()
    assert [r.action for r in copied] == ["t"]


def test_the_store_thread_is_busy_while_any_job_runs_even_if_a_later_one_was_cancelled() -> None:
    """A queued job whose caller went away is cancelled; the one running before it still uses
    the connection, so the loop must not take it."""
    from server.store.sqlite.thread import StoreThread

    thread = StoreThread()
    go = threading.Event()
    try:
        first = thread.submit(go.wait, 10)
        second = thread.submit(lambda: None)
        assert second.cancel()
        assert not thread.idle
        go.set()
        first.result(5)
        assert thread.idle
    finally:
        go.set()
        thread.shutdown()


def test_the_syncer_process_gets_none_of_the_servers_environment(tmp_path: Path) -> None:
    """The server's environment may hold secrets (a replica's KMS_MASTER_KEY, PGPASSWORD); the
    child that only syncs a file is given none of it."""

    async def body() -> bytes:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            syncer = store._backend._syncer
            assert syncer is not None
            return Path(f"/proc/{syncer._proc.pid}/environ").read_bytes()
        finally:
            await store.close()

    os.environ["SEED_KMS_TEST_SECRET"] = "s3cret"
    try:
        environ = asyncio.run(body())
    finally:
        del os.environ["SEED_KMS_TEST_SECRET"]
    assert b"s3cret" not in environ
