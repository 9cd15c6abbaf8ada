"""The keys an agent may complete and list (Keys/ListGrantedKeys): granted by name or group,
never another key, on both backends."""

from __future__ import annotations

import asyncio

from server.store import Grant
from tests.unit.server.conftest import open_store_at

NOW = 1_800_000_000


def _seal(version: int) -> bytes:
    return b"sealed-%d" % version


def test_granted_keys_are_those_of_the_agent_and_its_groups(store_at: tuple[str, str]) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            await store.create_key("mine", NOW, _seal, [Grant("agent", "web-1")])
            await store.create_key("ours", NOW, _seal, [Grant("group", "web"), Grant("agent", "web-1")])
            await store.create_key("theirs", NOW, _seal, [Grant("group", "db"), Grant("agent", "web-2")])
            await store.create_key("nobody", NOW, _seal, [])
            names = [k.name for k in await store.granted_keys("web-1", ("web",))]
            assert names == ["mine", "ours"]  # each once, in order
            assert [k.name for k in await store.granted_keys("web-3", ("web",))] == ["ours"]
            assert [k.name for k in await store.granted_keys("web-3", ())] == []
            assert [k.name for k in await store.granted_keys("x", ("db", "web"))] == ["ours", "theirs"]
        finally:
            await store.close()

    asyncio.run(body())
