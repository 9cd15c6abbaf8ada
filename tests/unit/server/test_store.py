"""server/store: migrations, single-use tokens under concurrency, refusal of foreign files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from pathlib import Path

import pytest

from kms.errors import ResourceExhausted, Revoked
from server.store import CertificateRecord, Grant, JoinTokenRecord, SqliteStore, StoreError
from server.store.migrations import SQLITE_MIGRATIONS
from tests.unit.server.conftest import hold_store_thread

NOW = 1_800_000_000


def _token(token_id: str = "00" * 8, *, expires: int = NOW + 900) -> JoinTokenRecord:
    return JoinTokenRecord(token_id, b"h" * 32, "web-1", ("a", "b"), NOW, expires)


def _cert(serial: str) -> CertificateRecord:
    return CertificateRecord(serial, "web-1", NOW, NOW + 86400, b"der", NOW, None)


def test_new_store_is_migrated_0600_and_wal(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        assert await store.schema_version() == len(SQLITE_MIGRATIONS)
        await store.close()

    asyncio.run(body())
    assert (tmp_path / "kms.db").stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(tmp_path / "kms.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_enroll_consumes_token_once_even_when_racing(tmp_path: Path) -> None:
    async def body() -> list[object]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        await store.add_join_token(_token())
        results = await asyncio.gather(
            *(store.enroll("00" * 8, b"h" * 32, NOW + 1, _cert(f"{i:x}")) for i in range(1, 21))
        )
        agents = await store.list_agents()
        await store.close()
        assert len(agents) == 1 and agents[0].groups == ("a", "b")
        return list(results)

    results = asyncio.run(body())
    assert sum(r is not None for r in results) == 1


@pytest.mark.parametrize(
    "token_id, secret_hash, now, name",
    [
        pytest.param("ff" * 8, b"h" * 32, NOW + 1, "web-1", id="unknown"),
        pytest.param("00" * 8, b"x" * 32, NOW + 1, "web-1", id="wrong-hash"),
        pytest.param("00" * 8, b"h" * 32, NOW + 900, "web-1", id="expired"),
        pytest.param("00" * 8, b"h" * 32, NOW + 1, "web-2", id="other-name"),
    ],
)
def test_enroll_refusals_write_nothing(
    tmp_path: Path, token_id: str, secret_hash: bytes, now: int, name: str
) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        await store.add_join_token(_token())
        cert = CertificateRecord("1", name, NOW, NOW + 1, b"der", NOW, None)
        assert await store.enroll(token_id, secret_hash, now, cert) is None
        assert await store.list_agents() == []
        assert (await store.get_join_token("00" * 8)).used_at is None  # type: ignore[union-attr]
        await store.close()

    asyncio.run(body())


def test_meta_and_emptiness(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        assert await store.set_meta("trust_domain", "a.org", replace=False) == "a.org"
        assert await store.set_meta("trust_domain", "b.org", replace=False) == "a.org"
        assert await store.set_meta("trust_domain", "c.org", replace=True) == "c.org"
        assert await store.is_empty()
        await store.add_join_token(_token())
        assert not await store.is_empty()
        await store.close()

    asyncio.run(body())


def test_the_ca_is_stored_once_with_its_key(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.set_meta(
                "ca_key", "stale key of an attempt that stored no certificate", replace=False
            )
            assert await store.create_ca("key A", "cert A") == ("key A", "cert A")
            assert await store.create_ca("key B", "cert B") == ("key A", "cert A")  # neither is changed
            assert (await store.get_meta("ca_key"), await store.get_meta("ca_cert")) == ("key A", "cert A")
        finally:
            await store.close()

    asyncio.run(body())


def _open(path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(path)
        await store.close()

    asyncio.run(body())


def test_refuses_garbage(tmp_path: Path) -> None:
    (tmp_path / "kms.db").write_bytes(b"not sqlite" * 100)
    with pytest.raises(StoreError, match="corrupt or not a Seed KMS database"):
        _open(tmp_path / "kms.db")


def test_refuses_another_apps_database(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "kms.db").execute("CREATE TABLE things (x)").connection.commit()
    with pytest.raises(StoreError, match="not a Seed KMS store"):
        _open(tmp_path / "kms.db")


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    _open(tmp_path / "kms.db")
    conn = sqlite3.connect(tmp_path / "kms.db")
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (len(SQLITE_MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="upgrade kms-server"):
        _open(tmp_path / "kms.db")


def test_upgrade_to_rotation_events_keeps_every_event_and_the_sequence(tmp_path: Path) -> None:
    """Migration 5 rebuilds the events table: rows, their seqs and the high-water mark survive."""
    path = tmp_path / "kms.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER)")
    for version, step in enumerate(SQLITE_MIGRATIONS[:4], start=1):
        for statement in step:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    for serial in ("a1", "b2", "c3"):
        conn.execute(
            "INSERT INTO events(kind, serial, reason, at) VALUES ('cert', ?, 'unspecified', 1)", (serial,)
        )
    conn.execute("DELETE FROM events WHERE seq = 3")  # the high-water mark is 3, not 2
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO events(kind, reason, at) VALUES ('rotate', 'superseded', 1)")
    conn.close()

    async def body() -> None:
        store = await SqliteStore.open(path)
        try:
            assert await store.schema_version() == len(SQLITE_MIGRATIONS)
            assert [(e.seq, e.serial) for e in await store.events_after(0, 10)] == [(1, "a1"), (2, "b2")]
            await store.create_key("app", NOW, lambda v: b"sealed-%d" % v, [])
            record, event = await store.rotate_key("app", NOW, lambda v: b"sealed-%d" % v)
            assert record.current_version == 2
            assert (event.seq, event.kind, event.key_name, event.key_version) == (4, "rotate", "app", 2)
            assert await store.events_after(2, 10) == [event]
            assert await store.last_seq() == 4
        finally:
            await store.close()

    asyncio.run(body())


def test_group_commit_isolates_a_failing_write_and_keeps_one_audit_chain(tmp_path: Path) -> None:
    """Concurrent writes share commits; a refused one rolls back alone, the others all land."""
    from kms.audit import first_break
    from kms.errors import AlreadyExists
    from server.store import AuditEntry

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:

            def create(name: str) -> Awaitable[object]:
                return store.create_key(
                    name, NOW, lambda v: b"m", [], audit=AuditEntry(NOW, "admin", "key.create", f"key:{name}")
                )

            names = [f"k{i}" for i in range(30)] + ["k0"] * 5
            results = await asyncio.gather(*(create(n) for n in names), return_exceptions=True)
            assert sum(isinstance(r, AlreadyExists) for r in results) == 5
            assert not [
                r for r in results if isinstance(r, BaseException) and not isinstance(r, AlreadyExists)
            ]
            assert sorted(k.name for k in await store.list_keys()) == sorted(set(names))
            audit = await store.audit_after(0, 100)
            assert len(audit) == 30 and first_break(audit) is None
        finally:
            await store.close()

    asyncio.run(body())


def test_cached_release_authorizations_follow_every_key_change(tmp_path: Path) -> None:
    """Releases reuse their authorization until a grant, version or state changes, here or elsewhere."""
    from kms.errors import FailedPrecondition, PermissionDenied
    from server.store import Grant

    path = tmp_path / "kms.db"

    async def body() -> None:
        store = await SqliteStore.open(path)
        try:

            async def release(version: int | None = None) -> int:
                got = await store.release_key_version("app", version, "web-1", ("web",), "abc", NOW)
                return got.version

            def seal(v: int) -> bytes:
                return b"sealed-%d" % v

            await store.create_key("app", NOW, seal, [Grant("group", "web")])
            assert [await release(), await release()] == [1, 1]  # the second from the cache
            await store.rotate_key("app", NOW, seal)
            assert await release() == 2
            await store.ungrant_key("app", Grant("group", "web"))
            with pytest.raises(PermissionDenied):
                await release()
            await store.grant_key("app", Grant("agent", "web-1"), NOW)
            assert await release(1) == 1
            await store.revoke_key_version("app", 1, "keyCompromise", NOW, seal)
            with pytest.raises(FailedPrecondition, match="compromised"):
                await release(1)
            assert await release(2) == 2
            await store.rotate_key("app", NOW, seal)
            assert await release(2) == 2  # cached again, and then destroyed
            await store.destroy_key_version("app", 2, NOW)
            with pytest.raises(FailedPrecondition, match="destroyed"):
                await release(2)
            assert await release() == 3
            # Another connection takes the grant away: the next batch sees it.
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("DELETE FROM key_grants WHERE key_name='app'")
            other.close()
            with pytest.raises(PermissionDenied):
                await release()
            releases = sqlite3.connect(path).execute("SELECT COUNT(*) FROM key_releases").fetchone()[0]
            assert releases == 7  # one row per release that was allowed
        finally:
            await store.close()

    asyncio.run(body())


def test_a_batch_that_sqlite_rolled_back_fails_whole_and_leaves_nothing(tmp_path: Path) -> None:
    """If SQLite ends the transaction itself (I/O error, disk full), no later step may commit alone."""
    from server.store import AuditEntry

    async def body() -> tuple[list[object], str | None, int]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:

            def failing_read(db: sqlite3.Connection) -> bool:
                db.execute("ROLLBACK")  # what SQLite does on SQLITE_IOERR or SQLITE_FULL
                raise sqlite3.OperationalError("disk I/O error")

            def meta(db: sqlite3.Connection) -> bool:
                db.execute("INSERT INTO meta VALUES ('x', 'y')")
                return True

            # Both writes must share one batch: the SQLite thread is held busy until both are
            # queued (under load, it could otherwise take the first alone and the test prove nothing).
            go = hold_store_thread(store)
            writes = asyncio.gather(
                store._write(failing_read, savepoint=False),
                store._write(meta, AuditEntry(NOW, "admin", "t", "o")),
                return_exceptions=True,
            )
            await asyncio.sleep(0.05)  # both coroutines run up to their queued write
            go.set()
            results: list[object] = list(await writes)
            return results, await store.get_meta("x"), len(await store.audit_after(0, 10))
        finally:
            await store.close()

    results, meta_value, audit_rows = asyncio.run(body())
    assert all(isinstance(r, StoreError) for r in results), results
    assert results[0] is not results[1]
    assert (meta_value, audit_rows) == (None, 0)


def test_a_renewal_after_a_revocation_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.add_join_token(_token())
            assert await store.enroll("00" * 8, b"h" * 32, NOW + 1, _cert("c1"))
            await store.add_certificate(_cert("c2"), ("a",), renewed_from="c1")  # fine while unrevoked
            await store.revoke_certificate("c2", "keyCompromise", NOW)
            with pytest.raises(Revoked, match="renewal refused"):
                await store.add_certificate(_cert("c3"), ("a",), renewed_from="c2")
            await store.revoke_agent("web-1", "keyCompromise", NOW)
            with pytest.raises(Revoked, match="renewal refused"):
                await store.add_certificate(_cert("c4"), ("a",), renewed_from="c1")
            assert await store.get_certificate("c3") is None and await store.get_certificate("c4") is None
        finally:
            await store.close()

    asyncio.run(body())


def test_a_paced_write_is_committed_by_close_not_left_waiting(tmp_path: Path) -> None:
    """Under load a commit waits for its pace; closing the store meanwhile commits it first."""
    import time

    from server.store import AuditEntry

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        store._last_batch, store._last_commit = 2, time.monotonic()  # as if the last batch was busy
        write = asyncio.create_task(store.append_audit(AuditEntry(NOW, "admin", "token.create", "agent:x")))
        await asyncio.sleep(0)  # queued, its commit paced
        await asyncio.wait_for(store.close(), 5)
        await asyncio.wait_for(write, 5)  # acknowledged: durable
        with pytest.raises(StoreError, match="closed"):
            await store.append_audit(AuditEntry(NOW, "admin", "token.create", "agent:y"))

    asyncio.run(body())
    conn = sqlite3.connect(tmp_path / "kms.db")
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 1


def test_lineage_revocation_reaches_every_renewed_certificate_and_no_other(tmp_path: Path) -> None:
    """c1 -> c2 -> c3 and c1 -> c4: revoking c2 takes c3 too, never its parent or its sibling."""

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.add_join_token(_token())
            assert await store.enroll("00" * 8, b"h" * 32, NOW + 1, _cert("c1"))
            for child, parent in (("c2", "c1"), ("c3", "c2"), ("c4", "c1")):
                await store.add_certificate(_cert(child), ("a",), renewed_from=parent)
            events = await store.revoke_lineage("c2", "keyCompromise", NOW)
            assert [(e.kind, e.serial, e.agent_name) for e in events or []] == [
                ("cert", "c2", "web-1"),
                ("cert", "c3", "web-1"),
            ]
            assert [c.serial for c in await store.revoked_certificates()] == ["c2", "c3"]
            # c1 already had a revoked child: revoking it reaches c4, and c1 itself.
            events = await store.revoke_lineage("c1", "keyCompromise", NOW)
            assert [e.serial for e in events or []] == ["c1", "c4"]
            assert await store.revoke_lineage("c1", "keyCompromise", NOW) is None  # nothing left
        finally:
            await store.close()

    asyncio.run(body())


def test_a_second_renewal_within_the_window_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.add_join_token(_token())
            assert await store.enroll("00" * 8, b"h" * 32, NOW + 1, _cert("c1"))
            # The enrollment itself does not count: one renewal right after it is fine.
            await store.add_certificate(_cert("c2"), ("a",), renewed_from="c1", not_renewed_since=NOW - 60)
            with pytest.raises(ResourceExhausted, match="retry in 60s"):
                await store.add_certificate(
                    _cert("c3"), ("a",), renewed_from="c2", not_renewed_since=NOW - 60
                )
            await store.add_certificate(_cert("c3"), ("a",), renewed_from="c2", not_renewed_since=NOW)
        finally:
            await store.close()

    asyncio.run(body())


async def _enrolled_and_granted(store: SqliteStore) -> None:
    """web-1 enrolled with certificate c1, and granted key app."""
    await store.add_join_token(_token())
    assert await store.enroll("00" * 8, b"h" * 32, NOW + 1, _cert("c1"))
    await store.create_key("app", NOW, lambda v: b"sealed-%d" % v, [Grant("agent", "web-1")])


def test_no_release_commits_after_the_callers_revocation(tmp_path: Path) -> None:
    """Even queued behind the revocation in the same group commit, the release is refused."""

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await _enrolled_and_granted(store)
            assert (await store.release_key_version("app", None, "web-1", (), "c1", NOW)).version == 1
            results = await asyncio.gather(
                store.revoke_agent("web-1", "keyCompromise", NOW),
                *(store.release_key_version("app", None, "web-1", (), "c1", NOW) for _ in range(5)),
                return_exceptions=True,
            )
            assert all(isinstance(r, Revoked) for r in results[1:]), results
            with pytest.raises(Revoked, match="was revoked"):
                await store.release_key_version("app", None, "web-1", (), "c1", NOW)
        finally:
            await store.close()
        conn = sqlite3.connect(tmp_path / "kms.db")
        assert conn.execute("SELECT COUNT(*) FROM key_releases").fetchone()[0] == 1

    asyncio.run(body())


def test_a_revocation_by_another_connection_stops_the_next_release(tmp_path: Path) -> None:
    """A serial found unrevoked is remembered (no query per release) only until anyone writes:
    here another connection (another worker process, a tool)."""

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await _enrolled_and_granted(store)
            for _ in range(2):  # the second is answered from the cache
                await store.release_key_version("app", None, "web-1", (), "c1", NOW)
            other = sqlite3.connect(tmp_path / "kms.db", isolation_level=None)
            other.execute("UPDATE certificates SET revoked_at=?, revocation_reason='keyCompromise'", (NOW,))
            other.close()
            with pytest.raises(Revoked, match="was revoked"):
                await store.release_key_version("app", None, "web-1", (), "c1", NOW)
        finally:
            await store.close()

    asyncio.run(body())


def test_upgrade_to_lineage_finds_earlier_renewals_in_the_audit_trail(tmp_path: Path) -> None:
    path = tmp_path / "kms.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER)")
    for version, step in enumerate(SQLITE_MIGRATIONS[:5], start=1):
        for statement in step:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    conn.execute("INSERT INTO agents(name, created_at, updated_at) VALUES ('web-1', 1, 1)")
    for serial in ("a1", "b2", "c3", "d4"):
        conn.execute(
            "INSERT INTO certificates(serial, agent_name, not_before, not_after, der, issued_at, groups_json)"
            " VALUES (?, 'web-1', 1, 2, x'00', 1, '[]')",
            (serial,),
        )
    for seq, (actor, obj, outcome) in enumerate(
        [
            ("agent:web-1/a1", "serial:b2", "ok"),
            ("agent:web-1/b2", "serial:c3", "ok"),
            ("agent:web-1/c3", "serial:d4", "denied"),  # refused: no lineage
            ("agent:web-1/a1", "key:app/v1", "ok"),  # another action
        ],
        start=1,
    ):
        action = "renew" if obj.startswith("serial:") else "key.release"
        conn.execute(
            "INSERT INTO audit VALUES (?, 1, ?, ?, ?, ?, x'00', x'00')", (seq, actor, action, obj, outcome)
        )
    conn.close()

    async def body() -> None:
        store = await SqliteStore.open(path)
        try:
            events = await store.revoke_lineage("a1", "keyCompromise", NOW)
            assert [e.serial for e in events or []] == ["a1", "b2", "c3"]
        finally:
            await store.close()

    asyncio.run(body())
