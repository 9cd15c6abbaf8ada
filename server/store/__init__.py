"""Persistence behind one interface: SQLite embedded (the default), or PostgreSQL shared by replicas.

``Store`` is the one implementation, sql/store.py's SqlStore, over either backend: the domain
services type against it. Its records are in records.py.
"""

from pathlib import Path

from server.store.records import (
    AgentRecord,
    AuditEntry,
    CertificateRecord,
    Enrollment,
    Grant,
    JoinTokenRecord,
    KeyRecord,
    KeyVersionRecord,
    RevocationEvent,
    StoreError,
    WriteOutcomeUnknown,
)
from server.store.sql.store import SqlStore
from server.store.sqlite import SqliteStore

# One implementation over two backends (issue 21): no separate interface to keep in step.
Store = SqlStore

__all__ = [
    "AgentRecord",
    "AuditEntry",
    "CertificateRecord",
    "Enrollment",
    "Grant",
    "JoinTokenRecord",
    "KeyRecord",
    "KeyVersionRecord",
    "RevocationEvent",
    "SqliteStore",
    "Store",
    "StoreError",
    "WriteOutcomeUnknown",
    "open_store",
]


async def open_store(
    database: str | None, sqlite_path: Path, *, password_file: Path | None = None, workers: int = 1
) -> Store:
    """The store a server runs on: PostgreSQL at database (its password in password_file, if
    given), or SQLite at sqlite_path when database is None. workers: how many processes of this
    server open it (--workers), which share a PostgreSQL replica's connections, or pace
    SQLite's group commit together (sqlite/commit.py)."""
    if database is None:
        return await SqliteStore.open(sqlite_path, workers=workers)
    # Imported here: PostgreSQL's driver and our code for it cost about 50 ms at every start of
    # every kms-server process and worker on the default SQLite.
    from server.store.postgres import PostgresStore

    return await PostgresStore.open(database, password_file=password_file, workers=workers)
