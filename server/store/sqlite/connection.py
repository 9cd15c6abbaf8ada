"""The SQLite connection: opened and migrated, its WAL scrubbed, copied for backups.

Everything here runs on the store's thread.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from server.store.migrations import SQLITE_MIGRATIONS
from server.store.records import StoreError

__all__ = ["connect", "erase_wal", "snapshot"]


def connect(path: Path) -> sqlite3.Connection:
    """Opens (creating 0600 if absent), checks and migrates the store. Raises StoreError."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # Destroyed key material must not linger in free pages.
        conn.execute("PRAGMA secure_delete=ON")
        _migrate(conn, path)
        # Finish any erasure a destroy could not complete (another reader held the WAL).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise StoreError(f"store {path} failed its integrity check: restore it from a backup")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"store {path} is corrupt or not a Seed KMS database ({exc})") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "schema_version" not in tables:
        raise StoreError(f"{path} is an SQLite database but not a Seed KMS store")
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER)")
    current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
    if current > len(SQLITE_MIGRATIONS):
        raise StoreError(
            f"store {path} has schema version {current}, newer than this kms-server knows "
            f"({len(SQLITE_MIGRATIONS)}): upgrade kms-server"
        )
    for version in range(current + 1, len(SQLITE_MIGRATIONS) + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in SQLITE_MIGRATIONS[version - 1]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?, strftime('%s','now'))", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def erase_wal(db: sqlite3.Connection) -> bool:
    """Copies the WAL into the database (secure_delete zeroed freed pages) and truncates it.

    Returns False when a reader in another process blocks the checkpoint;
    the old page images then stay in the WAL until a later checkpoint.
    """
    db.execute("PRAGMA busy_timeout=200")  # never hold the store thread for long
    try:
        for _ in range(5):
            busy, log, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy and log in (done, 0, -1):
                return True
        return False
    finally:
        db.execute("PRAGMA busy_timeout=5000")


def snapshot(db: sqlite3.Connection, target: Path) -> None:
    """A consistent copy of the live database (SQLite's online backup API), 0600."""
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    out = sqlite3.connect(target)
    try:
        db.backup(out)
    finally:
        out.close()
