"""Persistence behind one interface, so PostgreSQL can back replicas later."""

from server.store.base import (
    AgentRecord,
    AuditEntry,
    CertificateRecord,
    Grant,
    JoinTokenRecord,
    KeyRecord,
    KeyVersionRecord,
    RevocationEvent,
    Store,
    StoreError,
)
from server.store.sqlite import SqliteStore

__all__ = [
    "AgentRecord",
    "AuditEntry",
    "CertificateRecord",
    "Grant",
    "JoinTokenRecord",
    "KeyRecord",
    "KeyVersionRecord",
    "RevocationEvent",
    "SqliteStore",
    "Store",
    "StoreError",
]
