"""server/revocation/watch.py rule 7 over a real store: key events go to the key's grantees at the time of the event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from server.deployment.sealing import Sealer
from server.endpoints.authn import Caller
from server.keys import KeyService
from server.revocation.feed import RevocationFeed
from server.revocation.watch import Heartbeat, WatchItem, WatchService
from server.store import RevocationEvent, SqliteStore

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _caller(key: rsa.RSAPrivateKey, name: str, *groups: str) -> Caller:
    return Caller(name, groups, name, f"spiffe://t/agent/{name}", NOW, NOW, key.public_key())


async def _replay(watch: WatchService, caller: Caller, until: int) -> list[WatchItem]:
    """What a stream from the beginning sends, up to the heartbeat that covers seq until."""
    items: list[WatchItem] = []
    async for item in watch.stream(caller, 0):
        items.append(item)
        if isinstance(item, Heartbeat) and item.current_seq >= until:
            break
    return items


def test_key_events_follow_the_grants_held_when_each_event_committed(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    async def body() -> dict[str, list[object]]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            keys = KeyService(store, Sealer(bytes(32)), lambda: NOW, publish=lambda event: None)
            await keys.create("k", ["agent:web-1"], allow_unknown_grantee=True)  # no enrolled agents here
            await keys.rotate("k")  # 1: web-1 granted
            await keys.ungrant("k", "agent:web-1")
            await keys.grant("k", "group:ops")
            await keys.rotate("k")  # 2: only group ops
            await keys.grant("k", "agent:web-1", allow_unknown_grantee=True)
            await keys.rotate("k")  # 3: web-1 and ops
            await keys.ungrant("k", "agent:web-1")  # later changes do not rewrite history
            watch = WatchService(store, RevocationFeed(await store.last_seq()), heartbeat=0.05, buffer=16)
            out: dict[str, list[object]] = {}
            for caller in (
                _caller(rsa_key, "web-1"),
                _caller(rsa_key, "web-2", "ops"),
                _caller(rsa_key, "web-3", "web"),
            ):
                items = await _replay(watch, caller, 3)
                out[caller.name] = [i.seq for i in items if isinstance(i, RevocationEvent)]
                # The heartbeat covers the withheld events too: the caller resumes after them.
                assert items[-1] == Heartbeat(3)
            return out
        finally:
            await store.close()

    assert asyncio.run(body()) == {"web-1": [1, 3], "web-2": [2, 3], "web-3": []}


def test_a_watcher_passed_over_by_live_key_events_still_hears_heartbeats(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Withheld events are no sign of life: without heartbeats the agent would think the server gone."""

    async def body() -> tuple[int, list[WatchItem]]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            feed = RevocationFeed(0)
            keys = KeyService(store, Sealer(bytes(32)), lambda: NOW, publish=feed.publish)
            await keys.create("payroll", ["group:pay"])
            watch = WatchService(store, feed, heartbeat=0.2, buffer=64)
            items: list[WatchItem] = []

            async def consume() -> None:
                async for item in watch.stream(_caller(rsa_key, "web-1", "web"), 0):
                    items.append(item)

            task = asyncio.create_task(consume())
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.0
            rotations = 0
            while loop.time() < end:  # an event at least every 0.05 s: more often than a tick
                await keys.rotate("payroll")
                rotations += 1
                await asyncio.sleep(0.02)
            during = len(items)
            task.cancel()
            return during, items
        finally:
            await store.close()

    during, items = asyncio.run(body())
    assert items and all(isinstance(i, Heartbeat) for i in items)
    # About one per 0.2 s while the withheld events keep coming; the agent's silence
    # timeout (three heartbeats) never fires.
    assert during >= 3, items
