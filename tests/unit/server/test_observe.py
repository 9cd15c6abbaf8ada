"""server/ops/observe.py, roster.py, journal.py: one screen's worth from memory, and events at once.

A real SQLite store in tmp_path; the keys are a stand-in (the view only lists them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from kms.errors import InvalidArgument
from server.keys import KeyService
from server.ops.journal import Journal
from server.ops.metrics import Metrics
from server.ops.observe import Observer, Window
from server.ops.rates import Rates
from server.ops.roster import Roster
from server.revocation.feed import GuardedStream, StreamGuard
from server.store import CertificateRecord, JoinTokenRecord, RevocationEvent, SqliteStore, Store
from tests.unit.server.conftest import open_store_at

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T = int(NOW.timestamp())
DAY = 86400


class _Keys:
    async def list(self) -> list[Any]:
        return []


async def _enroll(store: Store, name: str, serial: str, not_after: int) -> CertificateRecord:
    await store.add_join_token(JoinTokenRecord(f"t-{name}", b"h" * 32, name, ("web",), T, T + 900))
    cert = CertificateRecord(serial, name, T, not_after, b"der", T, f"t-{name}")
    assert await store.enroll(f"t-{name}", b"h" * 32, T, cert)
    return cert


async def _world(tmp_path: Path) -> tuple[Store, dict[str, str], Roster, Journal, StreamGuard, Observer]:
    store = await SqliteStore.open(tmp_path / "kms.db")
    for name, serial, days in (("a-1", "a1", 3), ("b-2", "b2", 1), ("c-3", "c3", 2)):
        await _enroll(store, name, serial, T + days * DAY)
    revoked: dict[str, str] = {}
    roster, journal, guard = Roster(store, revoked.get), Journal(), StreamGuard()
    observer = Observer(
        store,
        roster,
        journal,
        cast(KeyService, _Keys()),
        guard,
        Rates(Metrics()),
        lambda: NOW,
        lambda name: 0,
    )
    return store, revoked, roster, journal, guard, observer


def test_the_roster_windows_names_and_orders_ends_from_memory(tmp_path: Path) -> None:
    async def body() -> None:
        store, revoked, roster, _, _, _ = await _world(tmp_path)
        await roster.fresh()
        assert roster.window("", 0, 2) == (3, ["a-1", "b-2"])
        assert roster.window("", 2, 5) == (3, ["c-3"])
        assert roster.window("-2", 0, 5) == (1, ["b-2"])
        assert roster.ending(T, 2) == [(T + DAY, "b-2"), (T + 2 * DAY, "c-3")]
        revoked["b2"] = "keyCompromise"  # the revocation service's map: no re-read needed
        assert roster.ending(T, 2) == [(T + 2 * DAY, "c-3"), (T + 3 * DAY, "a-1")]
        roster.issued(CertificateRecord("a1r", "a-1", T, T + 3600, b"der", T, None))  # a renewal
        roster.issued(CertificateRecord("d4", "d-4", T, T + 4 * DAY, b"der", T, "t-d"))  # a new agent
        assert roster.ending(T, 1) == [(T + 3600, "a-1")]
        assert roster.window("", 0, 10) == (4, ["a-1", "b-2", "c-3", "d-4"])
        await store.close()

    asyncio.run(body())


def test_the_soonest_expiries_skip_any_number_of_revoked_agents(tmp_path: Path) -> None:
    async def body() -> None:
        store, revoked, roster, _, _, _ = await _world(tmp_path)
        await roster.fresh()
        for i in range(1500):  # revoked, and all ending before any valid one
            roster.issued(CertificateRecord(f"r{i}", f"gone-{i:04}", T, T + 60 + i, b"der", T, None))
            revoked[f"r{i}"] = "keyCompromise"
        assert roster.ending(T, 1) == [(T + DAY, "b-2")]
        await store.close()

    asyncio.run(body())


def test_an_overview_holds_the_window_and_standing_counts_certificates_and_streams(tmp_path: Path) -> None:
    async def body() -> None:
        store, revoked, _, journal, guard, observer = await _world(tmp_path)
        task = asyncio.create_task(asyncio.sleep(60))
        guard.register(GuardedStream(task, "a1", "a-1"))
        journal.published(RevocationEvent(1, "agent", "b2", "b-2", None, None, "keyCompromise", T))
        revoked["b2"] = "keyCompromise"
        o = await observer.overview(Window(filter="-", agent_limit=2, event_limit=5, soon_limit=9))
        assert (o.agents_total, o.agents_matching, o.agents_online) == (3, 3, 1)
        assert [(a.name, a.open_streams, a.status) for a in o.agents] == [
            ("a-1", 1, "valid"),
            ("b-2", 0, "revoked"),
        ]
        assert [(e.kind, e.subject) for e in o.events] == [("revoke", "agent b-2")]
        assert [s.name for s in o.soon] == ["c-3", "a-1"]  # b-2 is revoked
        huge = await observer.overview(Window(agent_limit=10**6, event_limit=10**6))
        assert len(huge.agents) == 3  # capped at 500 rows, never every agent
        a = await observer.standing("a-1", "")
        assert (a.valid_certificates, a.open_streams, a.newest_serial) == (1, 1, "a1")
        by_serial = await observer.standing("", "A1")
        assert (by_serial.agent, by_serial.serial_valid, by_serial.serial_open_streams) == ("a-1", True, 1)
        assert (await observer.standing("b-2", "")).valid_certificates == 0
        # Serials as revoke takes them (0x, colons, leading zeros); the certificates renewed from
        # one, with their streams (a keyCompromise of it revokes them too).
        await store.add_certificate(
            CertificateRecord("a1e", "a-1", T, T + DAY, b"der", T, None), ("web",), renewed_from="a1"
        )
        guard.register(GuardedStream(task, "a1e", "a-1"))
        for typed in ("0x00A1", "a1", "00:a1"):
            s = await observer.standing("", typed)
            assert (s.agent, s.serial_valid, s.valid_certificates) == ("a-1", True, 2), typed
            assert (s.renewed_valid, s.renewed_open_streams) == (1, 1), typed
        assert (await observer.standing("", "a1e")).renewed_valid == 0
        task.cancel()
        await store.close()

    asyncio.run(body())


def test_follow_answers_at_once_then_on_each_event_well_before_the_interval(tmp_path: Path) -> None:
    async def body() -> None:
        store, _, _, journal, _, observer = await _world(tmp_path)
        hold = asyncio.Event()

        async def windows() -> AsyncIterator[Window]:
            yield Window(agent_limit=5, event_limit=5, interval=30.0)
            await hold.wait()

        views = observer.follow(windows())
        first = await asyncio.wait_for(anext(views), 5)
        assert [a.name for a in first.agents] == ["a-1", "b-2", "c-3"] and not first.events
        journal.issued(CertificateRecord("e5", "e-5", T, T + DAY, b"der", T, "t-e"))
        second = await asyncio.wait_for(anext(views), 2)  # not the 30 s interval
        assert [(e.kind, e.subject) for e in second.events] == [("enroll", "agent e-5")]
        await views.aclose()
        hold.set()
        await store.close()

    asyncio.run(body())


def test_follow_ends_at_once_with_the_error_of_a_bad_window_after_the_first(tmp_path: Path) -> None:
    async def body() -> None:
        store, _, _, _, _, observer = await _world(tmp_path)
        sent = asyncio.Event()

        async def windows() -> AsyncIterator[Window]:
            yield Window(agent_limit=5, interval=30.0)
            await sent.wait()
            raise InvalidArgument("undecodable")  # what the servicer's reader raises for garbage

        views = observer.follow(windows())
        await asyncio.wait_for(anext(views), 5)
        sent.set()
        with pytest.raises(InvalidArgument):
            await asyncio.wait_for(anext(views), 5)  # not after the 30 s interval
        await store.close()

    asyncio.run(body())


def test_unrevoked_serials_leave_out_revoked_held_and_expired_on_both_backends(
    store_at: tuple[str, str],
) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            await _enroll(store, "a-1", "a1", T + DAY)
            for serial, not_after in (("a2", T + DAY), ("a3", T + DAY), ("a4", T + DAY), ("a5", T - 1)):
                await store.add_certificate(
                    CertificateRecord(serial, "a-1", T, not_after, b"der", T, None),
                    ("web",),
                    renewed_from="a1",
                )
            await store.revoke_certificate("a2", "keyCompromise", T)
            await store.revoke_certificate("a3", "certificateHold", T)
            assert await store.unrevoked_serials("a-1", T) == ["a1", "a4"]  # a5 has expired
            assert await store.unrevoked_serials("nobody", T) == []
        finally:
            await store.close()

    asyncio.run(body())
