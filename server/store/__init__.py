"""Persistence behind one interface: SQLite embedded (the default), or PostgreSQL shared by replicas."""

from pathlib import Path

from server.store.base import (
    AgentRecord,
    AuditEntry,
    CertificateRecord,
    Enrollment,
    Grant,
    JoinTokenRecord,
    KeyRecord,
    KeyVersionRecord,
    RevocationEvent,
    Store,
    StoreError,
    WriteOutcomeUnknown,
)
from server.store.postgres import PostgresStore, is_postgres_url
from server.store.sqlite import SqliteStore

__all__ = [
    "AgentRecord",
    "AuditEntry",
    "CertificateRecord",
    "Enrollment",
    "Grant",
    "JoinTokenRecord",
    "KeyRecord",
    "KeyVersionRecord",
    "PostgresStore",
    "RevocationEvent",
    "SqliteStore",
    "Store",
    "StoreError",
    "WriteOutcomeUnknown",
    "is_postgres_url",
    "open_store",
]


async def open_store(database: str | None, sqlite_path: Path, *, password_file: Path | None = None) -> Store:
    """The store a server runs on: PostgreSQL at database (its password in password_file, if
    given), or SQLite at sqlite_path when database is None."""
    if database is None:
        return await SqliteStore.open(sqlite_path)
    return await PostgresStore.open(database, password_file=password_file)
