"""Schema step 12 (issue 19): the CA's generations, and the 'bundle' event. migrations.py appends it.

A CA generation is prepared (its key and certificate made, cross-certified by the
active one, published in the trust bundle), then active (it issues), then retired.
At most one is prepared and one active (unique partial indexes; the rotation that
prepares locks the active row, so replicas take turns). The deployment's first CA
becomes generation 1, active, on the first start that sees this table empty
(Store.adopt_ca): its key stays where it always was (ca.key in the data dir, the
meta row ca_key, or a token), so its sealed_key is NULL (and key_uri the token's
URI when the key is in one). A later generation's key is sealed_key (sealed under
the master key, slot ca.key), or key_uri for a key in a token.
A certificate records the generation that signed it (all of them 1 until a later
generation is activated). The event log gains kind 'bundle': the trust bundle
changed; its serial is the new CA certificate's serial (hex).
"""

from __future__ import annotations

from server.store.event_table import rebuild_sqlite_events

__all__ = ["POSTGRES_CA_GENERATIONS", "SQLITE_CA_GENERATIONS"]


def _generations(blob: str, time: str) -> list[str]:
    return [
        f"""CREATE TABLE ca_generations (
            generation INTEGER PRIMARY KEY CHECK (generation > 0),
            state TEXT NOT NULL CHECK (state IN ('prepared', 'active', 'retired')),
            key_type TEXT NOT NULL,
            certificate TEXT NOT NULL,
            cross_certificate TEXT,
            sealed_key {blob},
            key_uri TEXT,
            created_at {time} NOT NULL,
            activated_at {time},
            retired_at {time},
            CHECK (sealed_key IS NULL OR key_uri IS NULL)
        )""",
        "CREATE UNIQUE INDEX ca_generations_one_prepared ON ca_generations(state) WHERE state = 'prepared'",
        "CREATE UNIQUE INDEX ca_generations_one_active ON ca_generations(state) WHERE state = 'active'",
        "ALTER TABLE certificates ADD COLUMN ca_generation INTEGER NOT NULL DEFAULT 1",
    ]


_KINDS = ("cert", "agent", "key", "rotate", "disable", "enable", "release", "expire", "bundle")
_ALLOWED = ", ".join(f"'{kind}'" for kind in _KINDS)

SQLITE_CA_GENERATIONS: list[str] = [
    *_generations("BLOB", "INTEGER"),
    *rebuild_sqlite_events(12, _KINDS),  # the event log, for its CHECK, as in step 11
]

POSTGRES_CA_GENERATIONS: list[str] = [
    *_generations("BYTEA", "BIGINT"),
    "ALTER TABLE events DROP CONSTRAINT events_kind_check",
    f"ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK (kind IN ({_ALLOWED}))",
]
