"""server/audit.py: batched audit records are appended in order, in one chain, and never lost on a flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from kms.audit import first_break
from server.audit import AuditBatcher, AuditTrail
from server.store import AuditEntry, PostgresStore, SqliteStore, Store

NOW = 1_800_000_000


def _entry(i: int) -> AuditEntry:
    return AuditEntry(NOW, f"agent:web-{i}/0{i:x}", "exchange", f"server session:{i:032x}")


async def _open(kind: str, where: str) -> Store:
    if kind == "sqlite":
        return await SqliteStore.open(Path(where) / "kms.db")
    return await PostgresStore.open(where)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", str(tmp_path)
    return "postgresql", request.getfixturevalue("pg_database")


def test_records_added_between_flushes_make_one_batch_and_one_chain(store_at: tuple[str, str]) -> None:
    async def body() -> tuple[list[str], int]:
        store = await _open(*store_at)
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


def test_a_failed_batch_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        await store.close()  # every write now fails
        batcher = AuditBatcher(store, delay=60)
        batcher.add(_entry(1))
        batcher.add(_entry(2))
        await batcher.flush()

    with caplog.at_level(logging.ERROR, logger="server.audit"):
        asyncio.run(body())
    (record,) = [r for r in caplog.records if r.name == "server.audit"]
    assert "refused them twice" in record.getMessage() and record.__dict__["records"] == 2


def test_a_cancelled_reader_does_not_cancel_the_write_it_waited_for(store_at: tuple[str, str]) -> None:
    async def body() -> int:
        store = await _open(*store_at)
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
