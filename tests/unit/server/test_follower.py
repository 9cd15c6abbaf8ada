"""server/follower.py: another replica's events applied here in log order, each once, none of our own twice."""

from __future__ import annotations

import asyncio

from server.feed import RevocationFeed
from server.follower import EventFollower
from server.store import PostgresStore, RevocationEvent

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
