"""Versioned schema migrations. Append only: never edit a released step.

Each step is a list of statements applied in one transaction together with
the bump of ``schema_version``.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

MIGRATIONS: list[list[str]] = [
    # 1: tokens, agents, certificates.
    [
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE join_tokens (
            token_id TEXT PRIMARY KEY,
            secret_hash BLOB NOT NULL,
            name TEXT NOT NULL,
            groups_json TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            used_at INTEGER,
            used_by_serial TEXT
        )""",
        """CREATE TABLE agents (
            name TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
        """CREATE TABLE agent_groups (
            agent_name TEXT NOT NULL REFERENCES agents(name),
            group_name TEXT NOT NULL,
            PRIMARY KEY (agent_name, group_name)
        )""",
        "CREATE INDEX agent_groups_by_group ON agent_groups(group_name)",
        """CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            agent_name TEXT NOT NULL REFERENCES agents(name),
            not_before INTEGER NOT NULL,
            not_after INTEGER NOT NULL,
            der BLOB NOT NULL,
            issued_at INTEGER NOT NULL,
            token_id TEXT REFERENCES join_tokens(token_id)
        )""",
        "CREATE INDEX certificates_by_agent ON certificates(agent_name, issued_at)",
    ],
]
