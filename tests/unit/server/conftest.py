"""Fixtures for store-backed unit tests that run on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.store import PostgresStore, SqliteStore, Store


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
