"""server/revocation/feed.py and server/revocation/watch.py over a real store: ordering, backfill, overflow, closing."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import InvalidArgument, ResourceExhausted, Revoked, StoreDown
from server.endpoints.authn import Caller
from server.revocation.feed import GuardedStream, RevocationFeed, StreamGuard
from server.revocation.watch import Heartbeat, Resume, WatchService
from server.store import RevocationEvent, SqliteStore
from server.store.rules import caller_revoked

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _event(
    seq: int,
    kind: str = "key",
    serial: str | None = None,
    agent: str | None = None,
    reason: str = "unspecified",
) -> RevocationEvent:
    return RevocationEvent(
        seq,
        kind,
        serial,
        agent,
        "k" if kind == "key" else None,
        seq if kind == "key" else None,
        reason,
        0,
        ("group:web",) if kind == "key" else None,
    )


def test_guard_cancels_only_the_revoked_streams_after_the_grace() -> None:
    async def body() -> tuple[bool, bool, bool, str | None, int, int]:
        guard = StreamGuard()
        mine = GuardedStream(asyncio.create_task(asyncio.sleep(10)), "aa", "web-1")  # type: ignore[arg-type]
        renewed = GuardedStream(asyncio.create_task(asyncio.sleep(10)), "a2", "web-1")  # type: ignore[arg-type]
        other = GuardedStream(asyncio.create_task(asyncio.sleep(10)), "bb", "web-2")  # type: ignore[arg-type]
        for stream in (mine, renewed, other):
            guard.register(stream)
        per_agent = guard.open_streams("web-1")  # streams count per agent, not per certificate
        assert guard.close(_event(1, "cert", serial="aa", agent="web-1"), grace=0.05) == 1
        still_open = not mine.task.done()
        await asyncio.sleep(0.2)
        result = (still_open, mine.task.cancelled(), other.task.done(), mine.reason, per_agent)
        for stream in (mine, renewed, other):
            guard.unregister(stream)
            stream.task.cancel()
        return (*result, guard.open_streams("web-1"))

    assert asyncio.run(body()) == (True, True, False, "unspecified", 2, 0)


@pytest.mark.parametrize(
    "reason, advice",
    [
        ("keyCompromise", "--allow-reenroll"),
        ("superseded", "another enrollment of this agent's name replaced it"),
    ],
)
def test_a_revoked_stream_is_told_what_its_next_call_would_be(reason: str, advice: str) -> None:
    async def body() -> tuple[str, str]:
        guard = StreamGuard()
        stream = GuardedStream(asyncio.create_task(asyncio.sleep(10)), "aa", "web-1")  # type: ignore[arg-type]
        guard.register(stream)
        guard.close(_event(1, "cert", serial="aa", agent="web-1", reason=reason), grace=0)
        await asyncio.sleep(0.05)
        guard.unregister(stream)
        return stream.error().message, caller_revoked("aa", reason).message

    streamed, next_call = asyncio.run(body())
    assert streamed == next_call and advice in streamed


def test_a_stream_revoked_while_sending_is_not_cancelled_in_the_send() -> None:
    """gRPC would end the call without a status: the wrapper checks the reason after the send."""

    async def body() -> tuple[bool, str | None, bool]:
        stream = GuardedStream(asyncio.create_task(asyncio.sleep(10)), "aa", "web-1")  # type: ignore[arg-type]
        stream.sending = True
        stream.revoke("keyCompromise")
        await asyncio.sleep(0)
        spared = not stream.task.cancelled()
        stream.sending = False
        stream.task.cancel()
        return spared, stream.reason, "was revoked (keyCompromise)" in stream.error().message

    assert asyncio.run(body()) == (True, "keyCompromise", True)


def test_feed_drops_a_full_subscriber_and_keeps_the_others() -> None:
    async def body() -> tuple[bool, int, int]:
        feed = RevocationFeed(0)
        slow, fast = feed.subscribe(2), feed.subscribe(100)
        for seq in range(1, 6):
            feed.publish(_event(seq))
        return slow.overflowed, fast.queue.qsize(), feed.subscribers

    assert asyncio.run(body()) == (True, 5, 1)


def _caller(key: rsa.RSAPrivateKey) -> Caller:
    return Caller("web-1", ("web",), "aa", "spiffe://t/agent/web-1", NOW, NOW, key.public_key())


def test_watch_replays_then_follows_live_with_backfill_and_no_duplicates(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    async def body() -> list[object]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            from server.deployment.sealing import Sealer
            from server.keys import KeyService

            keys = KeyService(store, Sealer(bytes(32)), lambda: NOW, publish=lambda event: None)
            await keys.create("k", ["group:web"])
            for v in (1, 2, 3):  # three events in the log before the watcher comes
                await store.revoke_key_version("k", v, "unspecified", 0, keys.sealer_for("k", "aes-256"))
            feed = RevocationFeed(await store.last_seq())
            watch = WatchService(store, feed, heartbeat=0.05, buffer=16)
            items: list[object] = []

            async def consume() -> None:
                async for item in watch.stream(_caller(rsa_key), after_seq=1):
                    items.append(item)
                    if len([i for i in items if isinstance(i, RevocationEvent)]) == 4:
                        return

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.1)
            ev4 = await store.revoke_key_version("k", 4, "unspecified", 0, keys.sealer_for("k", "aes-256"))
            ev5 = await store.revoke_key_version("k", 5, "unspecified", 0, keys.sealer_for("k", "aes-256"))
            assert ev4 and ev5
            feed.publish(ev5)  # 4 is never published: the watcher must backfill it from the log
            feed.publish(ev5)  # and a duplicate must not come through
            await asyncio.wait_for(task, 5)
            return items
        finally:
            await store.close()

    items = asyncio.run(body())
    assert [i.seq for i in items if isinstance(i, RevocationEvent)] == [2, 3, 4, 5]
    assert any(isinstance(i, Heartbeat) for i in items)  # the quiet 0.1 s before event 4


@pytest.mark.parametrize("after", [-1, 99])
def test_watch_refuses_bad_positions(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, after: int) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            watch = WatchService(store, RevocationFeed(0), heartbeat=1, buffer=16)
            with pytest.raises(InvalidArgument):
                async for _ in watch.stream(_caller(rsa_key), after):
                    pass
        finally:
            await store.close()

    asyncio.run(body())


def test_overflowed_watcher_is_told_where_to_resume(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    async def body() -> tuple[list[object], str]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            feed = RevocationFeed(0)
            watch = WatchService(store, feed, heartbeat=5, buffer=16)
            items: list[object] = []

            async def consume() -> str:
                stream = watch.stream(_caller(rsa_key), 0)
                try:
                    async for item in stream:
                        items.append(item)
                except ResourceExhausted as exc:
                    return exc.message
                return "ended"

            # The consumer runs in its own task (as a gRPC handler does), so
            # the feed's delayed cancel of an overflowed subscriber hits only it.
            task = asyncio.create_task(consume())
            while not feed.subscribers:
                await asyncio.sleep(0.01)
            for seq in range(1, 18):  # 17 events into a buffer of 16 before the consumer runs again
                feed.publish(_event(seq))
            return items, await asyncio.wait_for(task, 5)
        finally:
            await store.close()

    items, message = asyncio.run(body())
    # Whatever it managed to take, it is then told where to resume, and ends.
    assert isinstance(items[-1], Resume)
    assert "resume after sequence" in message


def test_watch_ends_when_the_caller_itself_is_revoked(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    async def body() -> list[object]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            feed = RevocationFeed(0)
            watch = WatchService(store, feed, heartbeat=5, buffer=16)
            items: list[object] = []

            async def consume() -> None:
                async for item in watch.stream(_caller(rsa_key), 0):
                    items.append(item)

            task = asyncio.create_task(consume())
            while not feed.subscribers:
                await asyncio.sleep(0.01)
            feed.publish(_event(1, "cert", serial="bb"))  # someone else
            feed.publish(_event(2, "agent", serial="aa,cc", agent="web-1"))  # us
            with pytest.raises(Revoked):
                await asyncio.wait_for(task, 5)
            return items
        finally:
            await store.close()

    items = asyncio.run(body())
    assert [i.seq for i in items if isinstance(i, RevocationEvent)] == [1, 2]


def test_a_revoke_whose_caller_is_cancelled_still_takes_effect(tmp_path: Path) -> None:
    """The write may commit after the RPC is gone: the revoked map and the feed must follow it anyway."""
    from server.deployment.sealing import Sealer
    from server.keys import KeyService
    from server.revocation.service import RevocationService
    from server.store import CertificateRecord, JoinTokenRecord

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            now = int(NOW.timestamp())
            await store.add_join_token(JoinTokenRecord("t1", b"h" * 32, "web-1", (), now, now + 900))
            cert = CertificateRecord("aa", "web-1", now, now + 3600, b"der", now, None)
            assert await store.enroll("t1", b"h" * 32, now, cert)
            feed = RevocationFeed(await store.last_seq())
            sub = feed.subscribe(8)
            keys = KeyService(store, Sealer(bytes(32)), lambda: NOW, publish=feed.publish)
            revocations = RevocationService(store, feed, StreamGuard(), keys, lambda: NOW)
            await revocations.load()

            call = asyncio.create_task(revocations.revoke_certificate("aa", "keyCompromise"))
            await asyncio.sleep(0)  # the write is queued
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(0.5)  # the commit lands
            assert (await store.get_certificate("aa")).revoked_at is not None  # type: ignore[union-attr]
            assert revocations.revocation_reason("aa") == "keyCompromise"
            assert sub.queue.qsize() == 1
            # A repeat is "already revoked" and leaves the map as it is.
            again = await revocations.revoke_certificate("aa", "keyCompromise")
            assert again.already_revoked and revocations.is_revoked("aa")
        finally:
            await store.close()

    asyncio.run(body())


def test_a_replica_cut_off_from_its_store_ends_watch_streams_instead_of_heartbeating(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    async def body() -> tuple[list[object], str]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        cut_off = [0.0]
        try:
            watch = WatchService(
                store, RevocationFeed(0), heartbeat=0.05, buffer=16, cut_off_for=lambda: cut_off[0]
            )
            items: list[object] = []
            try:
                async for item in watch.stream(_caller(rsa_key), 0):
                    items.append(item)
                    if len(items) == 2:  # heartbeats while the store is there
                        cut_off[0] = 11.0
            except StoreDown as exc:  # the reason clients fail over on
                return items, exc.message
            return items, "ended"
        finally:
            await store.close()

    items, message = asyncio.run(body())
    assert len(items) == 2 and all(isinstance(i, Heartbeat) for i in items)
    assert (
        "the database is not reachable from this kms-server" in message
        and "resume after sequence 0" in message
    )


def test_heartbeats_come_from_ticks_to_quiet_subscribers_only_and_cover_what_was_queued() -> None:
    async def body() -> None:
        feed = RevocationFeed(0)
        quiet, busy, stalled = feed.subscribe(16), feed.subscribe(16), feed.subscribe(16)
        feed.tick()
        assert quiet.queue.empty() and busy.queue.empty()  # one tick: not quiet for an interval yet
        feed.publish(_event(1))  # busy's quiet count starts again; quiet's queue gets the event too
        quiet.queue.get_nowait()
        busy.queue.get_nowait()
        quiet.quiet = 1  # as if it had been quiet since the first tick
        feed.tick()
        assert quiet.queue.get_nowait() == Heartbeat(1)  # covers event 1, queued before it
        assert busy.queue.empty()
        feed.tick()
        assert busy.queue.get_nowait() == Heartbeat(1) and quiet.queue.empty()
        for _ in range(6):  # a subscriber that stopped reading does not fill up on heartbeats
            feed.tick()
        assert stalled.queue.qsize() == 1 and stalled.queue.get_nowait() == _event(1)

    asyncio.run(body())


def test_a_quiet_stream_hears_one_heartbeat_per_interval(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    async def body() -> list[float]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            watch = WatchService(store, RevocationFeed(0), heartbeat=0.2, buffer=16)
            arrivals: list[float] = []
            started = asyncio.get_running_loop().time()

            async def consume() -> None:
                async for item in watch.stream(_caller(rsa_key), after_seq=0):
                    assert isinstance(item, Heartbeat)
                    arrivals.append(asyncio.get_running_loop().time() - started)
                    if len(arrivals) == 5:
                        return

            await asyncio.wait_for(consume(), 5)
            return arrivals
        finally:
            await store.close()

    arrivals = asyncio.run(body())
    gaps = [b - a for a, b in zip(arrivals[1:], arrivals[2:], strict=False)]
    # One at once (the replay is done: the stream is live; see the test below), the next between
    # half an interval and one from the opening, then once per interval (two ticks, each a full
    # sleep: never sooner); the upper bounds leave room for a loaded machine.
    assert 0.1 <= arrivals[1] <= 1.0
    assert all(0.19 <= g <= 1.0 for g in gaps), gaps


def test_a_stream_hears_a_heartbeat_as_soon_as_its_replay_is_done(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Long before the first tick (30 s): the caller knows at once that its stream is live."""

    async def body() -> Heartbeat:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            watch = WatchService(store, RevocationFeed(0), heartbeat=30, buffer=16)
            stream = watch.stream(_caller(rsa_key), after_seq=0)
            first = await asyncio.wait_for(anext(stream), 10)
            await stream.aclose()
            watch.close()
            assert isinstance(first, Heartbeat)
            return first
        finally:
            await store.close()

    assert asyncio.run(body()).current_seq == 0


def test_closing_the_watch_service_stops_its_heartbeat_ticker(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    def tickers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if "_tick_forever" in repr(t.get_coro()) and not t.done()]

    async def body() -> tuple[int, int]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            watch = WatchService(store, RevocationFeed(0), heartbeat=5, buffer=16)
            stream = watch.stream(_caller(rsa_key), after_seq=0)
            waiting = asyncio.create_task(anext(stream))  # a stream starts the ticker
            await asyncio.sleep(0.05)
            running = len(tickers())
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await stream.aclose()
            watch.close()
            await asyncio.sleep(0)  # let the cancellation land
            return running, len(tickers())
        finally:
            await store.close()

    assert asyncio.run(body()) == (1, 0)
