"""Fixtures for store-backed unit tests that run on both backends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from server.store import SqliteStore, Store
from server.store.postgres import PostgresStore

T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(backend, where): a fresh data dir for SQLite, a fresh database for PostgreSQL."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path)
    return "postgresql", request.getfixturevalue("pg_database")


async def open_store_at(kind: str, where: str) -> Store:
    if kind == "sqlite":
        return await SqliteStore.open(Path(where) / "kms.db")
    return await PostgresStore.open(where)


def run_with_store(store_at: tuple[str, str], body: Callable[[Store], Awaitable[T]]) -> T:
    """Runs body on a store opened at store_at, closed after."""

    async def main() -> T:
        store = await open_store_at(*store_at)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def hold_store_thread(store: SqliteStore) -> threading.Event:
    """Keeps a SQLite store's thread busy (so writes queue, or go to it) until the event is set."""
    busy, go = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        go.wait(10)

    store._backend._thread.submit(hold)
    busy.wait(10)
    return go
