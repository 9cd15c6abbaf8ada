"""Persistence behind one interface, so PostgreSQL can back replicas later."""

from server.store.base import (
    AgentRecord,
    CertificateRecord,
    JoinTokenRecord,
    Store,
    StoreError,
)
from server.store.sqlite import SqliteStore

__all__ = ["AgentRecord", "CertificateRecord", "JoinTokenRecord", "SqliteStore", "Store", "StoreError"]
