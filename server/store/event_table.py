"""Rebuilding SQLite's event log for a new CHECK on its kinds (SQLite cannot alter a CHECK).

Steps 10, 11 and 12 each add event kinds. The table is copied whole, keeping every seq,
its grantees and the AUTOINCREMENT high-water mark (so no seq is ever handed out twice),
then renamed over the old one.
"""

from __future__ import annotations

__all__ = ["rebuild_sqlite_events"]


def rebuild_sqlite_events(step: int, kinds: tuple[str, ...]) -> list[str]:
    """The statements that rebuild the events table allowing exactly kinds (step names the copy)."""
    table = f"events_v{step}"
    allowed = ", ".join(f"'{kind}'" for kind in kinds)
    return [
        f"""CREATE TABLE {table} (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ({allowed})),
            serial TEXT,
            agent_name TEXT,
            key_name TEXT,
            key_version INTEGER,
            reason TEXT NOT NULL,
            at INTEGER NOT NULL,
            grantees TEXT
        )""",
        f"""INSERT INTO {table} SELECT seq, kind, serial, agent_name, key_name, key_version, reason, at, grantees
            FROM events""",  # noqa: S608 - constant names
        f"""UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))
            WHERE name = '{table}'""",  # noqa: S608 - constant names
        "DROP TABLE events",
        f"ALTER TABLE {table} RENAME TO events",
    ]
