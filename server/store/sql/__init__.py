"""The one implementation of the Store, over either backend: transactions by table group."""

from server.store.sql.store import SqlStore

__all__ = ["SqlStore"]
