"""Versioned schema migrations, one numbered list per backend. Append only: never edit a released step.

Step N is the same schema change on both backends, written in each one's
SQL; a store's ``schema_version`` is the number of steps applied. Each step
is applied in one transaction together with its row in ``schema_version``.
"""

from __future__ import annotations

from server.store.ca_migration import POSTGRES_CA_GENERATIONS, SQLITE_CA_GENERATIONS
from server.store.event_table import rebuild_sqlite_events

__all__ = ["POSTGRES_MIGRATIONS", "SCHEMA_VERSION", "SQLITE_MIGRATIONS"]

SQLITE_MIGRATIONS: list[list[str]] = [
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
        """CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            agent_name TEXT NOT NULL REFERENCES agents(name),
            not_before INTEGER NOT NULL,
            not_after INTEGER NOT NULL,
            der BLOB NOT NULL,
            issued_at INTEGER NOT NULL,
            token_id TEXT REFERENCES join_tokens(token_id),
            -- Groups belong to the certificate (from its token), so an older
            -- certificate never gains the groups of a later enrollment.
            groups_json TEXT NOT NULL
        )""",
        "CREATE INDEX certificates_by_agent ON certificates(agent_name, issued_at)",
    ],
    # 2: named AES keys with versions, grants and the release log.
    [
        """CREATE TABLE keys (
            name TEXT PRIMARY KEY,
            current_version INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        )""",
        """CREATE TABLE key_versions (
            key_name TEXT NOT NULL REFERENCES keys(name),
            version INTEGER NOT NULL CHECK (version > 0),
            state TEXT NOT NULL
                CHECK (state IN ('active', 'deactivated', 'compromised', 'destroyed', 'destroyed_compromised')),
            sealed_material BLOB,
            created_at INTEGER NOT NULL,
            state_changed_at INTEGER NOT NULL,
            PRIMARY KEY (key_name, version),
            CHECK ((state LIKE 'destroyed%') = (sealed_material IS NULL))
        )""",
        """CREATE TABLE key_grants (
            key_name TEXT NOT NULL REFERENCES keys(name),
            kind TEXT NOT NULL CHECK (kind IN ('agent', 'group')),
            grantee TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (key_name, kind, grantee)
        )""",
        """CREATE TABLE key_releases (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key_name TEXT NOT NULL,
            version INTEGER NOT NULL,
            agent_name TEXT NOT NULL,
            cert_serial TEXT NOT NULL,
            released_at INTEGER NOT NULL
        )""",
        "CREATE INDEX key_releases_by_key ON key_releases(key_name, version)",
    ],
    # 3: revocation: certificate and agent state, the event log, re-enrollment consent.
    [
        "ALTER TABLE certificates ADD COLUMN revoked_at INTEGER",
        "ALTER TABLE certificates ADD COLUMN revocation_reason TEXT",
        "ALTER TABLE agents ADD COLUMN revoked_at INTEGER",
        "ALTER TABLE join_tokens ADD COLUMN allow_reenroll INTEGER NOT NULL DEFAULT 0",
        # AUTOINCREMENT: sequence numbers strictly increase and are never reused.
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('cert', 'agent', 'key')),
            serial TEXT,
            agent_name TEXT,
            key_name TEXT,
            key_version INTEGER,
            reason TEXT NOT NULL,
            at INTEGER NOT NULL
        )""",
    ],
    # 4: the hash-chained audit trail.
    [
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            at INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            outcome TEXT NOT NULL,
            prev_hash BLOB NOT NULL,
            hash BLOB NOT NULL
        )""",
    ],
    # 5: key rotations join the event log (kind 'rotate'), so agents refresh
    # their key files. SQLite cannot alter a CHECK: rebuild the table. Its rows
    # are copied with their seq, so AUTOINCREMENT carries on from the same high mark.
    [
        """CREATE TABLE events_v5 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('cert', 'agent', 'key', 'rotate')),
            serial TEXT,
            agent_name TEXT,
            key_name TEXT,
            key_version INTEGER,
            reason TEXT NOT NULL,
            at INTEGER NOT NULL
        )""",
        "INSERT INTO events_v5 SELECT seq, kind, serial, agent_name, key_name, key_version, reason, at FROM events",
        # Keeps the high-water mark even if the newest events were ever removed.
        """UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))
            WHERE name = 'events_v5'""",
        "DROP TABLE events",
        "ALTER TABLE events_v5 RENAME TO events",
    ],
    # 6: the audit chain is keyed (HMAC under a key derived from the master key,
    # which the database does not hold). A server that has the master key marks
    # where keying begins at its first start (server/store/sql/audit.py);
    # records before that keep their plain hashes.
    ["INSERT INTO meta(key, value) VALUES ('audit_keyed_from', 'pending')"],
    # 7: key events record who was granted the key when they committed (a JSON
    # list of "agent:NAME"/"group:NAME"), so Watch sends them only to those.
    # Older key events get the key's grants as of the upgrade: the best known.
    [
        "ALTER TABLE events ADD COLUMN grantees TEXT",
        """UPDATE events SET grantees = (
            SELECT json_group_array(g.kind || ':' || g.grantee) FROM key_grants g WHERE g.key_name = events.key_name
        ) WHERE key_name IS NOT NULL""",
    ],
    # 8: a join token may replace the name's valid certificates (token create --replace):
    # they are revoked (superseded) in the transaction that enrolls with it.
    ["ALTER TABLE join_tokens ADD COLUMN replace_existing INTEGER NOT NULL DEFAULT 0"],
    # 9: certificate lineage: the certificate each renewal was made from, so revoking a
    # certificate for keyCompromise reaches every certificate renewed from it. Renewals
    # made before this step are found in the audit trail ("renew" by agent:NAME/OLD, of
    # serial:NEW).
    [
        "ALTER TABLE certificates ADD COLUMN renewed_from TEXT",
        "CREATE INDEX certificates_by_parent ON certificates(renewed_from)",
        """UPDATE certificates SET renewed_from = r.parent FROM (
            SELECT substr(object, 8) AS child, substr(actor, instr(actor, '/') + 1) AS parent FROM audit
            WHERE action = 'renew' AND outcome = 'ok' AND object LIKE 'serial:%' AND actor LIKE 'agent:%/%'
        ) AS r WHERE certificates.serial = r.child""",
    ],
    # 10: a key may be disabled (reversibly, as AWS KMS DisableKey): while disabled_at is
    # set no version is released; disabling and enabling join the event log
    # (kinds 'disable', 'enable'), so granted agents hear of them. A hold (revocation
    # reason certificateHold) can be lifted: a 'release' event lists the certificates
    # that work again. The events table is rebuilt for its CHECK, as in step 5, keeping
    # seq, grantees and the high-water mark.
    [
        "ALTER TABLE keys ADD COLUMN disabled_at INTEGER",
        "ALTER TABLE keys ADD COLUMN disabled_reason TEXT",
        *rebuild_sqlite_events(10, ("cert", "agent", "key", "rotate", "disable", "enable", "release")),
    ],
    # 11: keys over time, and key types (issue 16). A key has a type ('aes-256', or a key
    # pair the server made), an optional expiry and rotation period, the time its next
    # scheduled rotation is due, and a bit set of the expiry notices already given (so
    # each is given once, whatever the replicas and restarts). A version records when it
    # was deactivated (rotated out, or its key expired) and, for a key pair, its public key
    # (SubjectPublicKeyInfo DER). The event log gains kind 'expire'; rebuilt as in step 10.
    [
        """ALTER TABLE keys ADD COLUMN key_type TEXT NOT NULL DEFAULT 'aes-256'
            CHECK (key_type IN ('aes-256', 'rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256'))""",
        "ALTER TABLE keys ADD COLUMN expires_at INTEGER",
        "ALTER TABLE keys ADD COLUMN rotate_every INTEGER CHECK (rotate_every > 0)",
        "ALTER TABLE keys ADD COLUMN rotation_due_at INTEGER",
        "ALTER TABLE keys ADD COLUMN expiry_notices INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX keys_by_rotation_due ON keys(rotation_due_at) WHERE rotation_due_at IS NOT NULL",
        "CREATE INDEX keys_by_expiry ON keys(expires_at) WHERE expires_at IS NOT NULL",
        "ALTER TABLE key_versions ADD COLUMN deactivated_at INTEGER",
        "UPDATE key_versions SET deactivated_at = state_changed_at WHERE state = 'deactivated'",
        "ALTER TABLE key_versions ADD COLUMN public_key BLOB",
        *rebuild_sqlite_events(
            11, ("cert", "agent", "key", "rotate", "disable", "enable", "release", "expire")
        ),
    ],
]

# PostgreSQL: BYTEA for BLOB, BIGINT for Unix times. The event log's seq is
# not a sequence: it comes from a counter row whose lock is held until
# COMMIT, so events commit in seq order and a reader that sees seq N has
# seen every seq below it (a watcher resuming after N can never miss one).
POSTGRES_MIGRATIONS: list[list[str]] = [
    # 1: tokens, agents, certificates.
    [
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE join_tokens (
            token_id TEXT PRIMARY KEY,
            secret_hash BYTEA NOT NULL,
            name TEXT NOT NULL,
            groups_json TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT,
            used_by_serial TEXT
        )""",
        """CREATE TABLE agents (
            name TEXT PRIMARY KEY,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )""",
        """CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            agent_name TEXT NOT NULL REFERENCES agents(name),
            not_before BIGINT NOT NULL,
            not_after BIGINT NOT NULL,
            der BYTEA NOT NULL,
            issued_at BIGINT NOT NULL,
            token_id TEXT REFERENCES join_tokens(token_id),
            groups_json TEXT NOT NULL,
            inserted BIGINT GENERATED ALWAYS AS IDENTITY
        )""",
        "CREATE INDEX certificates_by_agent ON certificates(agent_name, issued_at)",
    ],
    # 2: named AES keys with versions, grants and the release log.
    [
        """CREATE TABLE keys (
            name TEXT PRIMARY KEY,
            current_version INTEGER NOT NULL,
            created_at BIGINT NOT NULL
        )""",
        """CREATE TABLE key_versions (
            key_name TEXT NOT NULL REFERENCES keys(name),
            version INTEGER NOT NULL CHECK (version > 0),
            state TEXT NOT NULL
                CHECK (state IN ('active', 'deactivated', 'compromised', 'destroyed', 'destroyed_compromised')),
            sealed_material BYTEA,
            created_at BIGINT NOT NULL,
            state_changed_at BIGINT NOT NULL,
            PRIMARY KEY (key_name, version),
            CHECK ((state LIKE 'destroyed%') = (sealed_material IS NULL))
        )""",
        """CREATE TABLE key_grants (
            key_name TEXT NOT NULL REFERENCES keys(name),
            kind TEXT NOT NULL CHECK (kind IN ('agent', 'group')),
            grantee TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (key_name, kind, grantee)
        )""",
        """CREATE TABLE key_releases (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key_name TEXT NOT NULL,
            version INTEGER NOT NULL,
            agent_name TEXT NOT NULL,
            cert_serial TEXT NOT NULL,
            released_at BIGINT NOT NULL
        )""",
        "CREATE INDEX key_releases_by_key ON key_releases(key_name, version)",
    ],
    # 3: revocation: certificate and agent state, the event log, re-enrollment consent.
    [
        "ALTER TABLE certificates ADD COLUMN revoked_at BIGINT",
        "ALTER TABLE certificates ADD COLUMN revocation_reason TEXT",
        "ALTER TABLE agents ADD COLUMN revoked_at BIGINT",
        "ALTER TABLE join_tokens ADD COLUMN allow_reenroll INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL
        )""",
        "INSERT INTO counters VALUES ('events', 0)",
        """CREATE TABLE events (
            seq BIGINT PRIMARY KEY,
            kind TEXT NOT NULL CONSTRAINT events_kind_check CHECK (kind IN ('cert', 'agent', 'key')),
            serial TEXT,
            agent_name TEXT,
            key_name TEXT,
            key_version INTEGER,
            reason TEXT NOT NULL,
            at BIGINT NOT NULL
        )""",
    ],
    # 4: the hash-chained audit trail.
    [
        """CREATE TABLE audit (
            seq BIGINT PRIMARY KEY,
            at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            outcome TEXT NOT NULL,
            prev_hash BYTEA NOT NULL,
            hash BYTEA NOT NULL
        )""",
    ],
    # 5: key rotations join the event log (kind 'rotate').
    [
        "ALTER TABLE events DROP CONSTRAINT events_kind_check",
        "ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK (kind IN ('cert', 'agent', 'key', 'rotate'))",
    ],
    # 6: the audit chain is keyed (see the SQLite step).
    ["INSERT INTO meta(key, value) VALUES ('audit_keyed_from', 'pending')"],
    # 7: key events record who was granted the key when they committed.
    [
        "ALTER TABLE events ADD COLUMN grantees TEXT",
        """UPDATE events SET grantees = COALESCE((
            SELECT json_agg(g.kind || ':' || g.grantee)::text FROM key_grants g WHERE g.key_name = events.key_name
        ), '[]') WHERE key_name IS NOT NULL""",
    ],
    # 8: a join token may replace the name's valid certificates (token create --replace).
    ["ALTER TABLE join_tokens ADD COLUMN replace_existing INTEGER NOT NULL DEFAULT 0"],
    # 9: certificate lineage (see the SQLite step).
    [
        "ALTER TABLE certificates ADD COLUMN renewed_from TEXT",
        "CREATE INDEX certificates_by_parent ON certificates(renewed_from)",
        """UPDATE certificates SET renewed_from = r.parent FROM (
            SELECT substr(object, 8) AS child, split_part(actor, '/', 2) AS parent FROM audit
            WHERE action = 'renew' AND outcome = 'ok' AND object LIKE 'serial:%' AND actor LIKE 'agent:%/%'
        ) AS r WHERE certificates.serial = r.child""",
    ],
    # 10: disabled keys, the 'disable' and 'enable' events, and 'release' events that
    # lift holds (see the SQLite step).
    [
        "ALTER TABLE keys ADD COLUMN disabled_at BIGINT",
        "ALTER TABLE keys ADD COLUMN disabled_reason TEXT",
        "ALTER TABLE events DROP CONSTRAINT events_kind_check",
        """ALTER TABLE events ADD CONSTRAINT events_kind_check
            CHECK (kind IN ('cert', 'agent', 'key', 'rotate', 'disable', 'enable', 'release'))""",
    ],
    # 11: key types, expiry, rotation schedules, expiry notices, deactivation times,
    # public keys, and the 'expire' event (see the SQLite step).
    [
        """ALTER TABLE keys ADD COLUMN key_type TEXT NOT NULL DEFAULT 'aes-256'
            CHECK (key_type IN ('aes-256', 'rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256'))""",
        "ALTER TABLE keys ADD COLUMN expires_at BIGINT",
        "ALTER TABLE keys ADD COLUMN rotate_every BIGINT CHECK (rotate_every > 0)",
        "ALTER TABLE keys ADD COLUMN rotation_due_at BIGINT",
        "ALTER TABLE keys ADD COLUMN expiry_notices INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX keys_by_rotation_due ON keys(rotation_due_at) WHERE rotation_due_at IS NOT NULL",
        "CREATE INDEX keys_by_expiry ON keys(expires_at) WHERE expires_at IS NOT NULL",
        "ALTER TABLE key_versions ADD COLUMN deactivated_at BIGINT",
        "UPDATE key_versions SET deactivated_at = state_changed_at WHERE state = 'deactivated'",
        "ALTER TABLE key_versions ADD COLUMN public_key BYTEA",
        "ALTER TABLE events DROP CONSTRAINT events_kind_check",
        """ALTER TABLE events ADD CONSTRAINT events_kind_check
            CHECK (kind IN ('cert', 'agent', 'key', 'rotate', 'disable', 'enable', 'release', 'expire'))""",
    ],
]

SQLITE_MIGRATIONS.append(SQLITE_CA_GENERATIONS)  # 12: CA generations, the 'bundle' event (issue 19)
POSTGRES_MIGRATIONS.append(POSTGRES_CA_GENERATIONS)

# The schema this kms-server writes; a store at a higher version is refused.
SCHEMA_VERSION = len(SQLITE_MIGRATIONS)
assert len(POSTGRES_MIGRATIONS) == SCHEMA_VERSION, "every step exists for both backends"
