"""server/revocation/follower.py: another replica's events applied here in log order, each once, none of our own twice."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from server.revocation.feed import RevocationFeed
from server.revocation.follower import EventFollower, EventLogRewritten
from server.store import CertificateRecord, JoinTokenRecord, RevocationEvent
from server.store.postgres import PostgresStore
from tests.unit.server.conftest import open_store_at

NOW = 1_800_000_000


def _seal(version: int) -> bytes:
    return b"sealed-%d" % version


def test_follower_applies_remote_events_in_order_once_and_skips_its_own(pg_database: str) -> None:
    async def body() -> tuple[list[int], list[int], list[int]]:
        here, there = await PostgresStore.open(pg_database), await PostgresStore.open(pg_database)
        try:
            for i in range(30):
                await there.create_key(f"k{i}", NOW, _seal, [])
            feed = RevocationFeed(await here.last_seq())
            applied: list[int] = []
            received = feed.subscribe(1000)

            def apply(event: RevocationEvent) -> None:
                applied.append(event.seq)
                assert feed.publish(event)

            follower = EventFollower(here, feed, apply)
            following = asyncio.create_task(follower.run())
            # Events committed by "there", interleaved with some of "here"'s own,
            # which this replica publishes itself the moment they commit.
            own: list[int] = []
            for i in range(30):
                store = here if i % 3 == 0 else there
                event = await store.revoke_key_version(f"k{i}", 1, "keyCompromise", NOW, _seal)
                assert event is not None
                # As RevocationService does: unless the follower was first.
                if store is here and feed.publish(event):
                    own.append(event.seq)
            async with asyncio.timeout(10):
                while feed.last_seq < 30 or len(applied) + len(own) < 30:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # any late duplicate would show up by now
            following.cancel()
            delivered = []
            while not received.queue.empty():
                delivered.append(received.queue.get_nowait().seq)
            return applied, own, delivered
        finally:
            await here.close()
            await there.close()

    applied, own, delivered = asyncio.run(body())
    assert sorted(applied + own) == list(range(1, 31))
    assert not set(applied) & set(own)
    assert applied == sorted(applied)  # the follower reads the log in order
    assert sorted(delivered) == list(range(1, 31)) and len(delivered) == 30  # nothing twice on the feed


def test_a_rewritten_log_stops_the_follower_even_once_it_has_grown_back(pg_database: str) -> None:
    async def body() -> tuple[bool, str]:
        here, there = await PostgresStore.open(pg_database), await PostgresStore.open(pg_database)
        try:
            for i in range(5):
                await there.create_key(f"k{i}", NOW, _seal, [])
            feed = RevocationFeed(await here.last_seq())
            follower = EventFollower(here, feed, feed.publish)
            # This replica's own revocations, published as they commit (before its follower reads them).
            events = [
                await here.revoke_key_version(f"k{i}", 1, "keyCompromise", NOW, _seal) for i in range(3)
            ]
            for event in events:
                assert event is not None and feed.publish(event)
            await follower._check_log_intact()  # the log holds them: nothing happens
            restore_point = events[0].seq  # type: ignore[union-attr]
            # The database is restored to just after the first of them (as a restore or a
            # failover that lost commits leaves it), then another replica's two new
            # revocations take the lost numbers: the log is as long as before, but not the
            # one this server sent out.
            conn = await asyncpg.connect(pg_database)
            await conn.execute("DELETE FROM events WHERE seq > $1", restore_point)
            await conn.execute("UPDATE counters SET value = $1 WHERE name = 'events'", restore_point)
            await conn.close()
            for i in (3, 4):
                await there.revoke_key_version(f"k{i}", 1, "keyCompromise", NOW, _seal)
            grown_back = await here.last_seq() == restore_point + 2
            with pytest.raises(EventLogRewritten) as stopped:
                await follower._check_log_intact()
            return grown_back, str(stopped.value)
        finally:
            await here.close()
            await there.close()

    grown_back, message = asyncio.run(body())
    assert grown_back and "no longer holds event" in message


def test_every_kind_of_event_reads_back_from_the_log_as_it_was_written(store_at: tuple[str, str]) -> None:
    # The follower stops a replica when the log's event differs from the one it published
    # (its own writes are published as returned by the store): the two must be equal.
    async def body() -> tuple[list[RevocationEvent | None], list[RevocationEvent]]:
        store = await open_store_at(*store_at)
        try:
            token = JoinTokenRecord("00" * 8, b"h" * 32, "web-1", ("a",), NOW, NOW + 900)
            await store.add_join_token(token)
            first = CertificateRecord("c1", "web-1", NOW, NOW + 86400, b"der", NOW, token.token_id)
            await store.enroll(token.token_id, token.secret_hash, NOW, first)
            second = CertificateRecord("c2", "web-1", NOW, NOW + 86400, b"der", NOW, None)
            await store.add_certificate(second, ("a",), renewed_from="c1")
            await store.create_key("k", NOW, _seal, [])
            written = [
                await store.revoke_key_version("k", 1, "keyCompromise", NOW, _seal),
                (await store.rotate_key("k", NOW, _seal))[1],
                await store.revoke_certificate("c1", "superseded", NOW),
                await store.revoke_agent("web-1", "keyCompromise", NOW),
            ]
            return written, await store.events_after(0, 100)
        finally:
            await store.close()

    written, read = asyncio.run(body())
    assert [e.kind if e else None for e in written] == ["key", "rotate", "cert", "agent"]
    assert written == read
