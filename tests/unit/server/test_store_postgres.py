"""server/store/postgres*: two store instances on one database behave as two replicas must.

Each test opens two PostgresStore objects on the same fresh database (two
pools, as two kms-server processes would have) and races them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from kms.audit import first_break
from kms.errors import Revoked
from server.store import AuditEntry, CertificateRecord, Grant, JoinTokenRecord, StoreError
from server.store.migrations import SCHEMA_VERSION
from server.store.postgres import PostgresStore
from server.store.postgres.connect import POOL_SIZE, pool_share

NOW = 1_800_000_000
T = TypeVar("T")


def _run(url: str, body: Callable[[PostgresStore, PostgresStore], Awaitable[T]]) -> T:
    async def main() -> T:
        a, b = await asyncio.gather(PostgresStore.open(url), PostgresStore.open(url))
        try:
            return await body(a, b)
        finally:
            await a.close()
            await b.close()

    return asyncio.run(main())


def _seal(version: int) -> bytes:
    return b"sealed-%d" % version


def test_two_replicas_migrating_at_once_make_one_schema(pg_database: str) -> None:
    async def body(a: PostgresStore, b: PostgresStore) -> tuple[int, int]:
        return await a.schema_version(), await b.schema_version()

    assert _run(pg_database, body) == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_refuses_a_newer_schema_and_a_foreign_database(pg_database: str, pg_cluster: object) -> None:
    async def main() -> None:
        store = await PostgresStore.open(pg_database)
        await store.close()
        conn = await asyncpg.connect(pg_database)
        await conn.execute("INSERT INTO schema_version VALUES ($1, 0)", SCHEMA_VERSION + 1)
        await conn.close()
        with pytest.raises(StoreError, match="newer than this kms-server knows"):
            await PostgresStore.open(pg_database)
        conn = await asyncpg.connect(pg_database)
        await conn.execute("DROP TABLE schema_version")
        await conn.close()
        with pytest.raises(StoreError, match="not a Seed KMS store"):
            await PostgresStore.open(pg_database)

    asyncio.run(main())


def test_replicas_creating_the_ca_at_once_store_one_key_with_one_certificate(pg_database: str) -> None:
    async def body(a: PostgresStore, b: PostgresStore) -> tuple[tuple[str, str], ...]:
        await a.set_meta("ca_key", "stale key of an attempt that stored no certificate", replace=False)
        results = await asyncio.gather(a.create_ca("key A", "cert A"), b.create_ca("key B", "cert B"))
        stored = (await a.get_meta("ca_key") or "", await a.get_meta("ca_cert") or "")
        return (*results, stored)

    first, second, stored = _run(pg_database, body)
    assert first == second == stored and stored in (("key A", "cert A"), ("key B", "cert B"))


def test_a_token_is_consumed_once_across_replicas(pg_database: str) -> None:
    async def body(a: PostgresStore, b: PostgresStore) -> list[object]:
        await a.add_join_token(JoinTokenRecord("00" * 8, b"h" * 32, "web-1", ("g",), NOW, NOW + 900))
        attempts = [
            (a if i % 2 else b).enroll(
                "00" * 8,
                b"h" * 32,
                NOW + 1,
                CertificateRecord(f"{i:x}", "web-1", NOW, NOW + 86400, b"der", NOW, None),
                audit=AuditEntry(NOW, "token", "enroll", f"serial:{i:x}"),
            )
            for i in range(1, 21)
        ]
        results = await asyncio.gather(*attempts)
        assert len(await b.list_agents()) == 1
        assert [r.action for r in await a.audit_after(0, 100)] == ["enroll"]
        return list(results)

    assert sum(r is not None for r in _run(pg_database, body)) == 1


def test_racing_rotations_never_fork_versions_or_sequence_numbers(pg_database: str) -> None:
    async def body(a: PostgresStore, b: PostgresStore) -> None:
        await a.create_key("k", NOW, _seal, [Grant("agent", "web-1")])
        audit = AuditEntry(NOW, "admin", "key.rotate", "key:k")
        done = await asyncio.gather(
            *((a if i % 2 else b).rotate_key("k", NOW, _seal, audit=audit) for i in range(30))
        )
        assert sorted(event.key_version for _, event in done) == list(range(2, 32))
        assert sorted(event.seq for _, event in done) == list(range(1, 31))
        key = (await b.list_keys())[0]
        assert key.current_version == 31
        assert [v.state for v in key.versions].count("active") == 1
        records = await b.audit_after(0, 100)
        assert [r.seq for r in records] == list(range(1, 31)) and first_break(records) is None

    _run(pg_database, body)


def test_a_reader_never_sees_a_later_event_before_an_earlier_one(pg_database: str) -> None:
    """Events commit in seq order: every read of the log is a gap-free prefix."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        for i in range(40):
            await a.create_key(f"k{i}", NOW, _seal, [])
        stop = asyncio.Event()
        seen: list[int] = []

        async def reader() -> None:
            while not stop.is_set():
                seen.extend(e.seq for e in await b.events_after(seen[-1] if seen else 0, 1000))

        watching = asyncio.create_task(reader())
        await asyncio.gather(
            *(
                (a if i % 2 else b).revoke_key_version(f"k{i}", 1, "keyCompromise", NOW, _seal)
                for i in range(40)
            )
        )
        stop.set()
        await watching
        seen.extend(e.seq for e in await b.events_after(seen[-1] if seen else 0, 1000))
        assert seen == list(range(1, 41))

    _run(pg_database, body)


def test_a_replica_is_woken_by_another_replicas_event(pg_database: str) -> None:
    async def body(a: PostgresStore, b: PostgresStore) -> None:
        woken = asyncio.Event()
        states: list[bool] = []
        listening = asyncio.create_task(b.follow_events(woken.set, states.append))
        async with asyncio.timeout(10):
            await woken.wait()  # the wake-up after connecting
        woken.clear()
        await a.add_join_token(JoinTokenRecord("11" * 8, b"h" * 32, "web-2", (), NOW, NOW + 900))
        await a.enroll(
            "11" * 8, b"h" * 32, NOW + 1, CertificateRecord("ab", "web-2", NOW, NOW + 9, b"d", NOW, None)
        )
        await a.revoke_certificate("ab", "keyCompromise", NOW)
        async with asyncio.timeout(PROBE_WAIT):
            await woken.wait()
        listening.cancel()
        assert states[0] is True
        assert [e.serial for e in await b.events_after(0, 10)] == ["ab"]

    _run(pg_database, body)


# Well under the listener's own 5 s probe, so the NOTIFY itself must have woken it.
PROBE_WAIT = 2.0


def test_first_start_lock_is_held_by_one_replica_at_a_time(pg_database: str) -> None:
    async def body(a: PostgresStore, b: PostgresStore) -> None:
        inside: list[str] = []
        overlaps: list[bool] = []

        async def hold(store: PostgresStore, name: str) -> None:
            async with store.exclusive():
                inside.append(name)
                overlaps.append(len(inside) > 1)
                await asyncio.sleep(0.2)
                inside.remove(name)

        await asyncio.gather(hold(a, "a"), hold(b, "b"))
        assert overlaps == [False, False]

    _run(pg_database, body)


def test_crl_numbers_never_repeat_and_never_list_less_across_replicas(pg_database: str) -> None:
    """Two replicas reissuing CRLs while certificates are revoked: distinct numbers, contents only grow."""

    async def body(a: PostgresStore, b: PostgresStore) -> list[tuple[int, int]]:
        await a.add_join_token(JoinTokenRecord("33" * 8, b"h" * 32, "web-4", (), NOW, NOW + 900))
        await a.enroll(
            "33" * 8, b"h" * 32, NOW + 1, CertificateRecord("d0", "web-4", NOW, NOW + 9, b"d", NOW, None)
        )
        for i in range(1, 11):
            await a.add_certificate(
                CertificateRecord(f"d{i}", "web-4", NOW, NOW + 9, b"d", NOW, None), (), renewed_from="d0"
            )

        async def crl(store: PostgresStore) -> tuple[int, int]:
            number, revoked = await store.next_crl()
            return number, len(revoked)

        revokes = [
            (a if i % 2 else b).revoke_certificate(f"d{i}", "keyCompromise", NOW) for i in range(1, 11)
        ]
        crls = [crl(a if i % 2 else b) for i in range(20)]
        done = await asyncio.gather(*crls, *revokes)
        return sorted(d for d in done[:20] if isinstance(d, tuple))

    issued = _run(pg_database, body)
    assert [n for n, _ in issued] == list(range(1, 21))
    sizes = [size for _, size in issued]
    assert sizes == sorted(sizes)


def test_a_renewal_racing_a_revocation_on_another_replica_is_refused(pg_database: str) -> None:
    """Renew authenticated on A; the agent is revoked through B before A writes: no fresh certificate."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        await a.add_join_token(JoinTokenRecord("22" * 8, b"h" * 32, "web-3", (), NOW, NOW + 900))
        first = CertificateRecord("c1", "web-3", NOW, NOW + 9, b"d", NOW, None)
        assert await a.enroll("22" * 8, b"h" * 32, NOW + 1, first)
        await b.revoke_agent("web-3", "keyCompromise", NOW)
        renewed = CertificateRecord("c2", "web-3", NOW, NOW + 9, b"d", NOW, None)
        with pytest.raises(Revoked, match="renewal refused"):
            await a.add_certificate(renewed, (), renewed_from="c1")
        assert await a.get_certificate("c2") is None

    _run(pg_database, body)


def test_a_lineage_revocation_racing_renewals_on_another_replica_leaves_none_valid(pg_database: str) -> None:
    """Each renewal from the lineage either commits first (and is revoked too) or is refused."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        await a.add_join_token(JoinTokenRecord("33" * 8, b"h" * 32, "web-4", (), NOW, NOW + 900))
        assert await a.enroll(
            "33" * 8, b"h" * 32, NOW + 1, CertificateRecord("l0", "web-4", NOW, NOW + 9, b"d", NOW, None)
        )
        for i in range(1, 4):  # l0 -> l1 -> l2 -> l3
            cert = CertificateRecord(f"l{i}", "web-4", NOW, NOW + 9, b"d", NOW, None)
            await a.add_certificate(cert, (), renewed_from=f"l{i - 1}")

        async def renew(i: int) -> None:
            cert = CertificateRecord(f"r{i}", "web-4", NOW, NOW + 9, b"d", NOW, None)
            await a.add_certificate(cert, (), renewed_from=f"l{i % 4}")

        results = await asyncio.gather(
            *(renew(i) for i in range(6)),
            b.revoke_lineage("l0", "keyCompromise", NOW),
            return_exceptions=True,
        )
        assert all(r is None or isinstance(r, Revoked) for r in results[:6]), results
        for i in range(6):
            cert = await a.get_certificate(f"r{i}")
            assert cert is None or cert.revoked_at is not None, f"r{i} renewed from the lineage survived it"
        for i in range(4):
            cert = await a.get_certificate(f"l{i}")
            assert cert is not None and cert.revoked_at is not None

    _run(pg_database, body)


def test_no_release_commits_after_a_revocation_on_another_replica(pg_database: str) -> None:
    """Releases in flight on A while B revokes the agent: none is recorded after the revocation."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        await a.add_join_token(JoinTokenRecord("44" * 8, b"h" * 32, "web-5", (), NOW, NOW + 900))
        assert await a.enroll(
            "44" * 8, b"h" * 32, NOW + 1, CertificateRecord("f1", "web-5", NOW, NOW + 9, b"d", NOW, None)
        )
        await a.create_key("app5", NOW, _seal, [Grant("agent", "web-5")])

        async def release() -> object:
            return await a.release_key_version(
                "app5",
                None,
                "web-5",
                (),
                "f1",
                NOW,
                audit=AuditEntry(NOW, "agent:web-5/f1", "key.release", "key:app5"),
            )

        async def revoke() -> object:
            await asyncio.sleep(0.01)
            return await b.revoke_agent(
                "web-5", "keyCompromise", NOW, audit=AuditEntry(NOW, "admin", "revoke.agent", "agent:web-5")
            )

        results = await asyncio.gather(*(release() for _ in range(30)), revoke(), return_exceptions=True)
        assert all(not isinstance(r, Exception) or isinstance(r, Revoked) for r in results), results
        actions = [
            r.action for r in await a.audit_after(0, 1000) if r.action in ("key.release", "revoke.agent")
        ]
        assert "revoke.agent" in actions
        assert "key.release" not in actions[actions.index("revoke.agent") :], actions

    _run(pg_database, body)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kms:p@ss:w0rd-secret@127.0.0.1:1/kms",  # an unencoded '@' and ':' in the password
        "postgresql://kms:w0rd-secret@127.0.0.1:notaport/kms",
    ],
)
def test_a_url_that_does_not_parse_is_refused_without_any_of_its_password(url: str) -> None:
    # No database needed: the URL fails before any connection is tried.
    from kms.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as caught:
        asyncio.run(PostgresStore.open(url))
    assert "w0rd-secret" not in caught.value.message and "w0rd" not in caught.value.message
    assert "percent-encode" in caught.value.message


def test_a_connection_lost_during_commit_is_an_unknown_outcome_not_a_plain_outage(pg_database: str) -> None:
    # Whoever wrote cannot tell whether the change happened: an audit batch must not be
    # appended twice on a retry (server/audit/trail.py), and the caller is told to check first.
    from server.store import WriteOutcomeUnknown

    async def main() -> str:
        store = await PostgresStore.open(pg_database)
        try:

            async def killed_before_commit(conn: asyncpg.Connection) -> bool:
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                async with store._pool.acquire() as other:
                    await other.execute("SELECT pg_terminate_backend($1)", pid)
                return True

            with pytest.raises(WriteOutcomeUnknown) as caught:
                await store._write(killed_before_commit)
            return caught.value.message
        finally:
            await store.close()

    assert "may or may not have been made" in asyncio.run(main())


def test_a_replacing_enrollment_and_a_revocation_of_its_certificate_never_deadlock(pg_database: str) -> None:
    """Both take a certificate's row lock before its advisory lock (the PostgreSQL Tx.lock_certificates)."""
    from server.store.postgres.connect import CERT_LOCKS

    async def body(a: PostgresStore, b: PostgresStore) -> object:
        await a.add_join_token(JoinTokenRecord("11" * 8, b"h" * 32, "web", (), NOW, NOW + 900))
        old = CertificateRecord("c1", "web", NOW, NOW + 9999, b"d", NOW, None)
        assert await a.enroll("11" * 8, b"h" * 32, NOW + 1, old)
        await a.add_join_token(
            JoinTokenRecord("22" * 8, b"h" * 32, "web", (), NOW + 2, NOW + 900), replace=True
        )
        # A revocation of c1 on another replica, caught between its row lock and its advisory lock.
        conn = await asyncpg.connect(pg_database)
        try:
            revoking = conn.transaction()
            await revoking.start()
            await conn.fetchrow("SELECT revoked_at FROM certificates WHERE serial=$1 FOR UPDATE", "c1")
            new = CertificateRecord("c2", "web", NOW, NOW + 9999, b"d", NOW + 3, None)
            enrolling = asyncio.create_task(b.enroll("22" * 8, b"h" * 32, NOW + 3, new))
            await asyncio.sleep(0.5)  # the enrollment waits for c1's row (or, wrongly, holds its lock)
            await asyncio.wait_for(
                conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", CERT_LOCKS, "c1"), 10
            )
            await revoking.rollback()
            return await asyncio.wait_for(enrolling, 10)
        finally:
            await conn.close()

    done = _run(pg_database, body)
    assert done is not None and [e.serial for e in done.superseded] == ["c1"]  # type: ignore[attr-defined]


def test_the_workers_of_a_replica_share_its_pool(pg_database: str) -> None:
    """--workers N: each worker's pool is a share of the replica's, so that the connections of a
    many-core replica stay near one process's (PostgreSQL allows 100 by default)."""
    assert [pool_share(n) for n in (1, 2, 3, 4, 16, 64)] == [POOL_SIZE, 5, 4, 3, 2, 2]

    async def main() -> None:
        store = await PostgresStore.open(pg_database, workers=4)
        pool = store._pool
        held = [await pool.acquire(timeout=5) for _ in range(pool_share(4))]
        try:
            with pytest.raises(asyncio.TimeoutError):  # the fourth waits: the share is the limit
                await pool.acquire(timeout=0.3)
        finally:
            for conn in held:
                await pool.release(conn)
            await store.close()

    asyncio.run(main())
