"""Disabling and enabling a key (issue 16 §2): the pure parts, and the store's transactions on
both backends (a disable that commits is never followed by a release)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from kms.errors import InvalidArgument, KeyDisabled, NotFound, PermissionDenied
from kms.events import NOT_REVOCATIONS, describe
from kms.v1 import revocation_pb2
from server.keys import MAX_REASON, parse_disable_reason
from server.revocation.watch import visible
from server.store import AuditEntry, CertificateRecord, Grant, JoinTokenRecord, SqliteStore
from server.store.migrations import SQLITE_MIGRATIONS
from server.store.postgres import PostgresStore
from server.store.records import RevocationEvent

NOW = 1_800_000_000


def _seal(version: int) -> bytes:
    return b"sealed-%d" % version


# --- pure --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("maintenance", "maintenance"), ("  suspected misuse by web-3 \n", "suspected misuse by web-3")],
    ids=["plain", "trimmed"],
)
def test_a_reason_is_one_trimmed_line(text: str, expected: str) -> None:
    assert parse_disable_reason(text) == expected


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "needs --reason"),
        ("   ", "needs --reason"),
        ("x" * (MAX_REASON + 1), f"at most {MAX_REASON}"),
        ("two\nlines", "one line"),
        ("bell\x07", "one line"),
    ],
    ids=["empty", "blank", "too-long", "newline", "control"],
)
def test_a_bad_reason_is_refused_saying_what_to_do(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        parse_disable_reason(text)


def _event(kind: str, grantees: tuple[str, ...] | None = ("group:web",)) -> RevocationEvent:
    return RevocationEvent(
        7, kind, None, None, "app", 2, "maintenance" if kind == "disable" else "", NOW, grantees
    )


@pytest.mark.parametrize("kind", ["disable", "enable"])
def test_disable_and_enable_go_only_to_the_keys_grantees(kind: str) -> None:
    assert visible(_event(kind), frozenset({"agent:web-1", "group:web"}))
    assert not visible(_event(kind), frozenset({"agent:db-1", "group:db"}))
    assert not visible(_event(kind, None), frozenset({"group:web"}))  # no recorded grantees: no one


def test_disable_and_enable_are_not_revocations_and_read_as_such() -> None:
    assert {"disable", "enable"} <= NOT_REVOCATIONS and not {"cert", "agent", "key"} & NOT_REVOCATIONS
    disable = revocation_pb2.RevocationEvent(
        seq=7, kind="disable", key_name="app", key_version=2, reason="maintenance", at=NOW
    )
    enable = revocation_pb2.RevocationEvent(seq=8, kind="enable", key_name="app", key_version=3, at=NOW)
    assert describe(disable) == (
        "#7 2027-01-15T08:00:00Z key app disabled (no version is released until it is enabled): maintenance"
    )
    assert describe(enable) == "#8 2027-01-15T08:00:00Z key app enabled (current version 3)"


# --- SQLite ------------------------------------------------------------------------


def test_disable_stops_releases_even_cached_and_enable_resumes_them(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.create_key("app", NOW, _seal, [Grant("group", "web")])

            def release(version: int | None = None, groups: tuple[str, ...] = ("web",)) -> object:
                return store.release_key_version("app", version, "web-1", groups, "c1", NOW)

            assert (await release()).version == 1  # type: ignore[attr-defined]
            # Queued behind the disable in one group commit, and from the cache: refused all the same.
            results = await asyncio.gather(
                store.disable_key("app", "maintenance", NOW + 1),
                *(release() for _ in range(5)),
                release(1),
                return_exceptions=True,
            )
            record, event = results[0]  # type: ignore[misc]
            assert record.disabled_at == NOW + 1 and record.disabled_reason == "maintenance"
            assert (event.kind, event.key_name, event.key_version, event.reason) == (
                "disable",
                "app",
                1,
                "maintenance",
            )
            assert event.grantees == ("group:web",)
            assert all(isinstance(r, KeyDisabled) and "key app is disabled" in r.message for r in results[1:])
            with pytest.raises(PermissionDenied):  # an agent not granted the key learns nothing of its state
                await release(groups=("db",))
            # Again: nothing changes, no event; the first reason stays.
            record, again = await store.disable_key("app", "other", NOW + 2)
            assert again is None and record.disabled_reason == "maintenance" and record.disabled_at == NOW + 1
            # A rotation while disabled makes a version nobody gets until enabled.
            await store.rotate_key("app", NOW + 3, _seal)
            with pytest.raises(KeyDisabled):
                await release()
            record, enabled = await store.enable_key("app", NOW + 4)
            assert record.disabled_at is None and record.disabled_reason is None
            assert (enabled.kind, enabled.key_version, enabled.reason) == ("enable", 2, "")  # type: ignore[union-attr]
            assert (await release()).version == 2  # type: ignore[attr-defined]
            assert (await store.enable_key("app", NOW + 5))[1] is None
            with pytest.raises(NotFound, match="no key named 'nope'"):
                await store.disable_key("nope", "x", NOW)
            assert [e.kind for e in await store.events_after(0, 10)] == ["disable", "rotate", "enable"]
        finally:
            await store.close()
        conn = sqlite3.connect(tmp_path / "kms.db")
        assert conn.execute("SELECT COUNT(*) FROM key_releases").fetchone()[0] == 2

    asyncio.run(body())


def test_upgrade_to_disable_events_keeps_every_event_its_grantees_and_the_sequence(tmp_path: Path) -> None:
    """Migration 10 rebuilds the events table again: rows, grantees and the high-water mark survive."""
    path = tmp_path / "kms.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER)")
    for version, step in enumerate(SQLITE_MIGRATIONS[:9], start=1):
        for statement in step:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    conn.execute("INSERT INTO keys VALUES ('app', 1, 1)")
    for seq in (1, 2, 3):
        conn.execute(
            "INSERT INTO events(kind, key_name, key_version, reason, at, grantees)"
            " VALUES ('rotate', 'app', ?, 'superseded', 1, '[\"group:web\"]')",
            (seq,),
        )
    conn.execute("DELETE FROM events WHERE seq = 3")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO events(kind, reason, at) VALUES ('disable', 'x', 1)")
    conn.close()

    async def body() -> None:
        store = await SqliteStore.open(path)
        try:
            assert [(e.seq, e.grantees) for e in await store.events_after(0, 10)] == [
                (1, ("group:web",)),
                (2, ("group:web",)),
            ]
            record, event = await store.disable_key("app", "maintenance", NOW)
            assert record.disabled_at == NOW and event is not None and event.seq == 4
        finally:
            await store.close()

    asyncio.run(body())


# --- PostgreSQL: two replicas --------------------------------------------------------


def test_no_release_commits_after_a_disable_on_another_replica(pg_database: str) -> None:
    """Releases in flight on A while B disables the key: none is recorded after the disable."""

    async def body() -> None:
        a, b = await asyncio.gather(PostgresStore.open(pg_database), PostgresStore.open(pg_database))
        try:
            await a.add_join_token(JoinTokenRecord("55" * 8, b"h" * 32, "web-6", (), NOW, NOW + 900))
            cert = CertificateRecord("f6", "web-6", NOW, NOW + 9, b"d", NOW, None)
            assert await a.enroll("55" * 8, b"h" * 32, NOW + 1, cert)
            await a.create_key("app6", NOW, _seal, [Grant("agent", "web-6")])

            async def release() -> object:
                return await a.release_key_version(
                    "app6",
                    None,
                    "web-6",
                    (),
                    "f6",
                    NOW,
                    audit=AuditEntry(NOW, "agent:web-6/f6", "key.release", "key:app6"),
                )

            async def disable() -> object:
                await asyncio.sleep(0.01)
                return await b.disable_key(
                    "app6", "maintenance", NOW, audit=AuditEntry(NOW, "admin", "key.disable", "key:app6")
                )

            results = await asyncio.gather(*(release() for _ in range(30)), disable(), return_exceptions=True)
            assert all(not isinstance(r, Exception) or isinstance(r, KeyDisabled) for r in results), results
            actions = [
                r.action for r in await a.audit_after(0, 1000) if r.action in ("key.release", "key.disable")
            ]
            assert "key.disable" in actions
            assert "key.release" not in actions[actions.index("key.disable") :], actions
            # An idempotent repeat on A is not audited; enable on A lets releases through again.
            assert (
                await a.disable_key("app6", "x", NOW, audit=AuditEntry(NOW, "admin", "key.disable", "k"))
            )[1] is None
            assert sum(r.action == "key.disable" for r in await a.audit_after(0, 1000)) == 1
            assert (await a.enable_key("app6", NOW))[1] is not None
            assert (await release()).version == 1  # type: ignore[attr-defined]
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())
