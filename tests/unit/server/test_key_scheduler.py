"""The key scheduler (issue 16 §1) against a real store, on both backends: each scheduled rotation,
expiry and warning commits exactly once, whatever the restarts, repeats and racing replicas."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from kms.events import NOT_REVOCATIONS, describe
from kms.v1 import revocation_pb2
from server.deployment.sealing import Sealer
from server.keys import KeyService
from server.keys.scheduler import KeyScheduler
from server.store import Grant, RevocationEvent, Store
from server.store.postgres import PostgresStore
from server.store.sql.due import EXPIRED, WARNED_1D, WARNED_7D, next_rotation_after
from tests.unit.server.conftest import open_store_at

NOW = 1_800_000_000
PERIOD = 3600


def _seal(version: int) -> bytes:
    return b"sealed-%d" % version


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


def _scheduler(store: Store, clock: _Clock, published: list[RevocationEvent]) -> KeyScheduler:
    keys = KeyService(store, Sealer(bytes(range(32))), clock, publish=published.append)
    return KeyScheduler(store, keys, clock, published.append, poll=1.0)


async def _set(store: Store, name: str, **columns: Any) -> None:
    """The schedule columns, set as an administrator's `key create`/`key set` would."""
    assignments = ", ".join(f"{column}=?" for column in columns)
    await store._change(  # noqa: SLF001 - test setup
        lambda tx: tx.execute(f"UPDATE keys SET {assignments} WHERE name=?", *columns.values(), name)  # noqa: S608
    )


async def _scheduler_audit(store: Store) -> list[tuple[str, str]]:
    return [(r.action, r.object) for r in await store.audit_after(0, 1000) if r.actor == "scheduler"]


@pytest.mark.parametrize(
    "due, now, expected",
    [(100, 100, 110), (100, 105, 110), (100, 150, 160), (100, 159, 160), (100, 99, 110)],
    ids=["at-due", "within", "five-missed", "just-before-next", "early"],
)
def test_the_next_due_time_is_the_first_grid_point_after_now(due: int, now: int, expected: int) -> None:
    assert next_rotation_after(due, 10, now) == expected


def test_expire_is_news_for_key_holders_not_a_revocation() -> None:
    assert "expire" in NOT_REVOCATIONS
    event = revocation_pb2.RevocationEvent(
        seq=9, kind="expire", key_name="app", key_version=3, reason="expired", at=NOW
    )
    assert describe(event) == (
        "#9 2027-01-15T08:00:00Z key app expired (every version decrypts only; current version 3): expired"
    )


def test_a_server_down_through_several_periods_rotates_once(store_at: tuple[str, str]) -> None:
    async def body() -> None:
        store, clock = await open_store_at(*store_at), _Clock()
        published: list[RevocationEvent] = []
        try:
            scheduler = _scheduler(store, clock, published)
            await store.create_key("app", NOW - 10 * PERIOD, _seal, [Grant("group", "web")])
            await store.create_key("other", NOW - 10 * PERIOD, _seal, [])
            # Due five and a half periods ago: five due times were missed while it was down.
            await _set(store, "app", rotate_every=PERIOD, rotation_due_at=NOW - 5 * PERIOD - PERIOD // 2)
            assert await store.next_schedule_due(NOW) == NOW - 5 * PERIOD - PERIOD // 2
            assert await scheduler.run_once() == 0
            assert await scheduler.run_once() == 0  # again: nothing more
            [key] = [k for k in await store.list_keys() if k.name == "app"]
            assert key.current_version == 2 and key.rotation_due_at == NOW + PERIOD // 2  # on the grid
            assert [(v.version, v.state, v.deactivated_at) for v in key.versions] == [
                (1, "deactivated", NOW),
                (2, "active", None),
            ]
            assert [(e.kind, e.key_name, e.key_version, e.grantees) for e in published] == [
                ("rotate", "app", 2, ("group:web",))
            ]
            assert await _scheduler_audit(store) == [("key.rotate", "key:app/v2 due:2027-01-15T02:30:00Z")]
            assert await store.next_schedule_due(NOW) == NOW + PERIOD // 2
            clock.now = NOW + PERIOD // 2  # the next due time: one more rotation
            assert await scheduler.run_once() == 0
            assert [e.key_version for e in published] == [2, 3]
            # A due time read before it moved does nothing (a replica that lost the race).
            assert await store.rotate_if_due("app", NOW - 5 * PERIOD - PERIOD // 2, clock.now, _seal) is None
        finally:
            await store.close()

    asyncio.run(body())


def test_a_disabled_key_is_skipped_and_rotates_once_when_enabled(store_at: tuple[str, str]) -> None:
    async def body() -> None:
        store, clock = await open_store_at(*store_at), _Clock()
        published: list[RevocationEvent] = []
        try:
            scheduler = _scheduler(store, clock, published)
            await store.create_key("app", NOW - PERIOD, _seal, [])
            await _set(store, "app", rotate_every=PERIOD, rotation_due_at=NOW - 3 * PERIOD)
            await store.disable_key("app", "maintenance", NOW - 4 * PERIOD)
            assert await store.next_schedule_due(NOW) is None
            assert await scheduler.run_once() == 0
            assert (await store.list_keys())[0].current_version == 1 and not published
            await store.enable_key("app", NOW)
            assert await scheduler.run_once() == 0
            assert await scheduler.run_once() == 0
            assert [(e.kind, e.key_version) for e in published] == [("rotate", 2)]
            assert (await store.list_keys())[0].rotation_due_at == NOW + PERIOD
        finally:
            await store.close()

    asyncio.run(body())


def test_expiry_deactivates_every_version_once_and_an_expired_key_never_rotates(
    store_at: tuple[str, str],
) -> None:
    async def body() -> None:
        store, clock = await open_store_at(*store_at), _Clock()
        published: list[RevocationEvent] = []
        try:
            scheduler = _scheduler(store, clock, published)
            await store.create_key("app", NOW - 10 * PERIOD, _seal, [Grant("agent", "web-1")])
            await store.rotate_key("app", NOW - 9 * PERIOD, _seal)
            await _set(store, "app", rotate_every=PERIOD, rotation_due_at=NOW - PERIOD, expires_at=NOW - 5)
            assert await store.next_schedule_due(NOW) == NOW - 7 * 86_400 - 5  # the warnings first
            assert await scheduler.run_once() == 0
            assert await scheduler.run_once() == 0
            [key] = await store.list_keys()
            assert key.current_version == 2 and key.expiry_notices == EXPIRED | WARNED_1D | WARNED_7D
            assert [(v.state, v.deactivated_at) for v in key.versions] == [
                ("deactivated", NOW - 9 * PERIOD),
                ("deactivated", NOW),
            ]
            assert [(e.kind, e.key_version, e.reason, e.grantees) for e in published] == [
                ("expire", 2, "expired", ("agent:web-1",))
            ]
            assert await _scheduler_audit(store) == [("key.expire", "key:app at:2027-01-15T07:59:55Z")]
            assert await store.next_schedule_due(NOW) is None
            assert await store.expire_key("app", NOW) is None
        finally:
            await store.close()

    asyncio.run(body())


def test_each_expiry_warning_is_logged_once(
    store_at: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        store, clock = await open_store_at(*store_at), _Clock()
        published: list[RevocationEvent] = []
        try:
            scheduler = _scheduler(store, clock, published)
            await store.create_key("app", NOW, _seal, [])
            expires = NOW + 3 * 86_400
            await _set(store, "app", expires_at=expires)
            caplog.set_level(logging.WARNING, "server.keys.scheduler")
            for _ in range(2):
                assert await scheduler.run_once() == 0
            assert await store.next_schedule_due(NOW) == expires - 86_400
            clock.now = expires - 3600  # within a day: the second warning
            for _ in range(2):
                assert await scheduler.run_once() == 0
            # Restarted (a fresh scheduler): nothing is given twice.
            assert await _scheduler(store, clock, published).run_once() == 0
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert [w.split(",")[0] for w in warnings] == [
                "key app expires within 7 days",
                "key app expires within 1 day",
            ]
            assert not published
            assert [a for a, _ in await _scheduler_audit(store)] == ["key.expiry_warning"] * 2
            assert (await store.list_keys())[0].expiry_notices == WARNED_7D | WARNED_1D
        finally:
            await store.close()

    asyncio.run(body())


def test_two_replicas_racing_make_one_rotation_and_one_expiry_per_due_time(pg_database: str) -> None:
    async def body() -> None:
        a, b = await asyncio.gather(PostgresStore.open(pg_database), PostgresStore.open(pg_database))
        clock, published = _Clock(), list[RevocationEvent]()
        try:
            names = [f"k{i}" for i in range(20)]
            for name in names:
                await a.create_key(name, NOW - PERIOD, _seal, [])
                await _set(a, name, rotate_every=PERIOD, rotation_due_at=NOW - 10)
            await a.create_key("gone", NOW - PERIOD, _seal, [])
            await _set(a, "gone", expires_at=NOW - 1, expiry_notices=WARNED_7D | WARNED_1D)
            replicas = [_scheduler(store, clock, published) for store in (a, b, a, b)]
            assert await asyncio.gather(*(r.run_once() for r in replicas)) == [0, 0, 0, 0]
            assert sorted((e.kind, e.key_name, e.key_version) for e in published) == sorted(
                [("rotate", name, 2) for name in names] + [("expire", "gone", 1)]
            )
            assert {k.name: k.current_version for k in await b.list_keys()} == {
                "gone": 1,
                **dict.fromkeys(names, 2),
            }
            audit = await _scheduler_audit(a)
            assert len(audit) == 21 and len(set(audit)) == 21
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())
