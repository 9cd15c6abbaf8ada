"""The keyed audit chain in both stores: where keying begins, and the copies handed to the audit devices."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from kms.audit import KEYED_ACTION, AuditRecord, check_chain, first_break
from kms.errors import NotFound
from server.audit.trail import AuditTrail
from server.deployment.sealing import Sealer
from server.store import AuditEntry, Grant, SqliteStore, Store
from server.store.ordered import InOrder
from server.store.records import AUDIT_MARKER
from tests.unit.server.conftest import open_store_at

NOW = 1_800_000_000
KEY = Sealer(bytes(32)).subkey("audit-chain")


def _entry(i: int) -> AuditEntry:
    return AuditEntry(NOW, "admin", "token.create", f"agent:web-{i}")


class Recorder:
    """An audit sink that keeps what it is given, and whether the write it came from had returned."""

    def __init__(self) -> None:
        self.batches: list[list[AuditRecord]] = []

    def write(self, records: Sequence[AuditRecord]) -> None:
        self.batches.append(list(records))

    @property
    def seqs(self) -> list[int]:
        return [r.seq for batch in self.batches for r in batch]


def test_a_new_store_is_keyed_from_its_first_record(store_at: tuple[str, str]) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            assert await store.get_meta(AUDIT_MARKER) == "pending"
            assert await store.open_audit_chain(KEY, NOW) == 1
            await store.append_audit(_entry(1))
            records = await store.audit_after(0, 10)
            assert [r.action for r in records] == [KEYED_ACTION, "token.create"]
            assert check_chain(records, KEY, 1) is None
            assert first_break(records) == 1  # not the unkeyed chain
            bad, count = await AuditTrail(store, key=KEY).verify()
            assert (bad, count) == (None, 2)
        finally:
            await store.close()
        # Started again: the chain is keyed already, nothing is added.
        store = await open_store_at(*store_at)
        try:
            assert await store.open_audit_chain(KEY, NOW) == 1
            assert len(await store.audit_after(0, 10)) == 2
        finally:
            await store.close()

    asyncio.run(body())


def test_an_upgraded_store_keeps_its_unkeyed_records_and_keys_the_rest(store_at: tuple[str, str]) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)  # as a server before the keyed chain wrote it
        try:
            for i in range(3):
                await store.append_audit(_entry(i))
        finally:
            await store.close()
        store = await open_store_at(*store_at)
        try:
            assert await store.open_audit_chain(KEY, NOW) == 4
            await store.append_audit(_entry(9))
            assert await store.get_meta(AUDIT_MARKER) == "4"
            bad, count = await AuditTrail(store, key=KEY).verify()
            assert (bad, count) == (None, 5)
        finally:
            await store.close()

    asyncio.run(body())


def test_a_removed_marker_is_not_replaced(store_at: tuple[str, str]) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            await store.open_audit_chain(KEY, NOW)
            await store.append_audit(_entry(1))
        finally:
            await store.close()
        await _delete_marker(*store_at)
        store = await open_store_at(*store_at)
        try:
            assert await store.open_audit_chain(KEY, NOW) is None
            bad, _ = await AuditTrail(store, key=KEY).verify()
            assert bad is not None and bad.seq == 1 and "marker" in bad.problem
            await store.append_audit(_entry(2))  # the server keeps serving, and keying
            assert first_break(await store.audit_after(0, 10), KEY, 1) is None
        finally:
            await store.close()

    asyncio.run(body())


async def _delete_marker(kind: str, where: str) -> None:
    if kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(Path(where) / "kms.db")
        conn.execute("DELETE FROM meta WHERE key = ?", (AUDIT_MARKER,))
        conn.commit()
        conn.close()
        return
    import asyncpg

    conn = await asyncpg.connect(where)
    try:
        await conn.execute("DELETE FROM meta WHERE key = $1", AUDIT_MARKER)
    finally:
        await conn.close()


def test_committed_records_reach_the_sink_in_order_before_the_write_returns(
    store_at: tuple[str, str],
) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)
        sink = Recorder()
        try:
            await store.open_audit_chain(KEY, NOW, sink)
            assert sink.seqs == [1]
            await store.create_key("k", NOW, lambda v: b"m", [Grant("group", "g")], audit=_entry(0))
            assert sink.seqs == [1, 2]  # before create_key returned

            # Many writers at once (batched on SQLite, racing on PostgreSQL): one chain, copied in order.
            await asyncio.gather(*(store.append_audit(_entry(i)) for i in range(40)))
            await asyncio.gather(
                *(store.rotate_key("k", NOW, lambda v: b"m", audit=_entry(i)) for i in range(10))
            )
            records = await store.audit_after(0, 100)
            assert sink.seqs == [r.seq for r in records] == list(range(1, 53))
            assert [r for batch in sink.batches for r in batch] == records

            # A write that fails copies nothing, and holds up nothing after it.
            with pytest.raises(NotFound):
                await store.rotate_key("no-such-key", NOW, lambda v: b"m", audit=_entry(99))
            await store.append_audit(_entry(100))
            assert sink.seqs[-1] == 53 and len(sink.seqs) == 53
        finally:
            await store.close()

    asyncio.run(body())


def test_postgres_copies_in_order_whichever_task_resumes_first() -> None:
    async def body() -> None:
        sink = Recorder()
        order = InOrder(sink)
        tickets = [order.reserve() for _ in range(4)]
        records = [[AuditRecord(t + 1, NOW, "a", "b", "c", "ok", b"", b"")] for t in tickets]
        third = asyncio.create_task(order.deliver(tickets[2], records[2]))
        second = asyncio.create_task(order.deliver(tickets[1], records[1]))
        await asyncio.sleep(0.05)
        assert sink.batches == [] and not third.done()  # ticket 0 has not settled
        order.abandon(tickets[0])  # its transaction failed
        await asyncio.wait_for(asyncio.gather(second, third), 5)
        await order.deliver(tickets[3], records[3])
        assert sink.seqs == [2, 3, 4]
        order.close()

    asyncio.run(body())


def test_a_store_without_a_key_writes_the_unkeyed_chain(tmp_path: Path) -> None:
    async def body() -> None:
        store: Store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.append_audit(_entry(1))
            assert first_break(await store.audit_after(0, 10)) is None
        finally:
            await store.close()

    asyncio.run(body())
