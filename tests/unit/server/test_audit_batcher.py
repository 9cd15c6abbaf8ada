"""server/audit/trail.py: batched audit records are appended in order, in one chain, once, and never lost on a flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from kms.audit import first_break
from kms.errors import Unavailable
from server.audit.trail import AuditBatcher, AuditTrail
from server.store import AuditEntry, SqliteStore, Store, WriteOutcomeUnknown
from tests.unit.server.conftest import open_store_at

NOW = 1_800_000_000


def _entry(i: int) -> AuditEntry:
    return AuditEntry(NOW, f"agent:web-{i}/0{i:x}", "exchange", f"server session:{i:032x}")


def test_records_added_between_flushes_make_one_batch_and_one_chain(store_at: tuple[str, str]) -> None:
    async def body() -> tuple[list[str], int]:
        store = await open_store_at(*store_at)
        try:
            # A long delay: only flush() (or the batch limit) writes.
            batcher = AuditBatcher(store, delay=60, max_batch=1000)
            await store.append_audit(AuditEntry(NOW, "admin", "key.create", "key:k"))
            for i in range(1, 201):
                batcher.add(_entry(i))
            unflushed = len(await store.audit_after(0, 1000))
            records = [r async for r in AuditTrail(store, batcher).records()]  # a reader flushes first
            assert first_break(records) is None
            return [r.actor for r in records], unflushed
        finally:
            await store.close()

    actors, unflushed = asyncio.run(body())
    assert unflushed == 1
    assert actors == ["admin"] + [f"agent:web-{i}/0{i:x}" for i in range(1, 201)]


def test_records_are_written_after_the_delay_and_at_the_batch_limit(tmp_path: Path) -> None:
    async def body() -> tuple[int, int, int]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            batcher = AuditBatcher(store, delay=0.05, max_batch=10)
            batcher.add(_entry(1))
            await asyncio.sleep(0)
            before = len(await store.audit_after(0, 100))
            await asyncio.sleep(0.3)
            after_delay = len(await store.audit_after(0, 100))
            for i in range(2, 12):  # ten more: the tenth fills a batch, which goes at once
                batcher.add(_entry(i))
            await asyncio.sleep(0.02)
            at_limit = len(await store.audit_after(0, 100))
            await batcher.flush()
            return before, after_delay, at_limit
        finally:
            await store.close()

    before, after_delay, at_limit = asyncio.run(body())
    assert (before, after_delay, at_limit) == (0, 1, 11)


def test_a_batch_the_store_keeps_refusing_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> float:
        store = await SqliteStore.open(tmp_path / "kms.db")
        await store.close()  # every write now fails
        batcher = AuditBatcher(store, delay=60, retry_for=0.3)
        batcher.add(_entry(1))
        batcher.add(_entry(2))
        started = time.monotonic()
        await batcher.flush()
        return time.monotonic() - started

    with caplog.at_level(logging.ERROR, logger="server.audit.trail"):
        waited = asyncio.run(body())
    (record,) = [r for r in caplog.records if r.name == "server.audit.trail"]
    assert "refused them" in record.getMessage() and record.__dict__["records"] == 2
    assert 0.09 <= waited < 5  # tried again (a pause of 0.1 s first) within retry_for, then given up


class _Faulty:
    """A real store whose append_audits fails as a database can: refused outright before
    it ever writes (refuse), or gone during COMMIT after writing (unknown_after_write)."""

    def __init__(self, store: Store, refuse: int = 0, unknown_after_write: int = 0) -> None:
        self.store = store
        self.refuse = refuse
        self.unknown_after_write = unknown_after_write
        self.calls = 0

    async def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        self.calls += 1
        if self.refuse:
            self.refuse -= 1
            raise Unavailable("the store is down for a moment")
        await self.store.append_audits(entries)
        if self.unknown_after_write:
            self.unknown_after_write -= 1
            raise WriteOutcomeUnknown("gone while committing")


def test_a_refused_batch_is_tried_again_and_later_records_keep_their_order(store_at: tuple[str, str]) -> None:
    async def body() -> tuple[list[str], int]:
        store = await open_store_at(*store_at)
        try:
            faulty = _Faulty(store, refuse=2)
            batcher = AuditBatcher(cast(Store, faulty), delay=0.01, max_batch=5)
            for i in range(1, 21):  # while the first batch waits to be retried, more come
                batcher.add(_entry(i))
                await asyncio.sleep(0.01)
            await batcher.flush()
            records = await store.audit_after(0, 100)
            assert first_break(records) is None
            return [r.actor for r in records], faulty.calls
        finally:
            await store.close()

    actors, calls = asyncio.run(body())
    assert actors == [f"agent:web-{i}/0{i:x}" for i in range(1, 21)]  # each once, in order
    assert calls >= 3


def test_a_batch_whose_commit_outcome_is_unknown_is_not_written_twice(
    store_at: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> list[str]:
        store = await open_store_at(*store_at)
        try:
            batcher = AuditBatcher(cast(Store, _Faulty(store, unknown_after_write=1)), delay=60)
            for i in range(1, 4):
                batcher.add(_entry(i))
            await batcher.flush()
            return [r.actor for r in await store.audit_after(0, 100)]
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="server.audit.trail"):
        actors = asyncio.run(body())
    assert actors == [f"agent:web-{i}/0{i:x}" for i in range(1, 4)]
    assert any("may be lost" in r.getMessage() for r in caplog.records if r.name == "server.audit.trail")


def test_records_beyond_the_bound_are_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> int:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            faulty = _Faulty(store, refuse=3)
            batcher = AuditBatcher(cast(Store, faulty), delay=60, max_batch=10, max_pending=10)
            for i in range(1, 16):  # five too many while nothing is written
                batcher.add(_entry(i))
            await batcher.flush()
            batcher.add(_entry(16))  # the next write reports the loss
            await batcher.flush()
            return len(await store.audit_after(0, 100))
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="server.audit.trail"):
        written = asyncio.run(body())
    assert written == 11
    (lost,) = [r for r in caplog.records if r.name == "server.audit.trail"]
    assert "too many were waiting" in lost.getMessage() and lost.__dict__["records"] == 5


class _Slow:
    """A real store that takes its time over each batch: a writer that cannot keep up."""

    def __init__(self, store: Store, pause: float) -> None:
        self.store, self.pause = store, pause

    async def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        await asyncio.sleep(self.pause)
        await self.store.append_audits(entries)


def test_a_flush_waits_for_the_records_added_before_it_not_after(tmp_path: Path) -> None:
    async def body() -> tuple[int, int, int]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            batcher = AuditBatcher(cast(Store, _Slow(store, 0.05)), delay=0.01, max_batch=5)
            added = 0
            stop = asyncio.Event()

            async def steady() -> None:  # 500 a second against at most 100 written
                nonlocal added
                while not stop.is_set():
                    added += 1
                    batcher.add(_entry(added))
                    await asyncio.sleep(0.002)

            producer = asyncio.create_task(steady())
            await asyncio.sleep(0.1)
            before = added
            await asyncio.wait_for(batcher.flush(), 10)
            written, after = len(await store.audit_after(0, 100_000)), added
            stop.set()
            await producer
            return before, written, after
        finally:
            await store.close()

    before, written, after = asyncio.run(body())
    assert before <= written < after  # everything before it, and it did not wait for the rest


def test_a_cancelled_reader_does_not_cancel_the_write_it_waited_for(store_at: tuple[str, str]) -> None:
    async def body() -> int:
        store = await open_store_at(*store_at)
        try:
            batcher = AuditBatcher(store, delay=60)
            for i in range(1, 51):
                batcher.add(_entry(i))
            reader = asyncio.create_task(batcher.flush())
            await asyncio.sleep(0)  # the write has started
            reader.cancel()  # an admin client gave up on `audit list`
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await batcher.flush()
            return len(await store.audit_after(0, 100))
        finally:
            await store.close()

    assert asyncio.run(body()) == 50


def test_an_outage_is_waited_out_once_not_once_per_batch(tmp_path: Path) -> None:
    async def body() -> tuple[float, int]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            faulty = _Faulty(store, refuse=1_000)  # down for good
            batcher = AuditBatcher(cast(Store, faulty), delay=60, max_batch=1, retry_for=0.4)
            for i in range(1, 6):
                batcher.add(_entry(i))
            started = time.monotonic()
            await batcher.flush()
            waited = time.monotonic() - started
            faulty.refuse = 0  # back: a write succeeds, and the next outage is waited out again
            batcher.add(_entry(6))
            await batcher.flush()
            return waited, len(await store.audit_after(0, 100))
        finally:
            await store.close()

    waited, written = asyncio.run(body())
    assert waited < 1.2  # five batches, one outage of 0.4 s: not five of them (2 s)
    assert written == 1
