"""Columns and row-to-record mapping, the same for both backends (only the SQL around them differs)."""

from __future__ import annotations

import json
from typing import Any

from server.store.records import AgentRecord, CertificateRecord, JoinTokenRecord, RevocationEvent

__all__ = [
    "AGENT_COLUMNS",
    "DESCENDANTS",
    "CERT_COLUMNS",
    "EVENT_COLUMNS",
    "TOKEN_COLUMNS",
    "VERSION_COLUMNS",
    "agent_record",
    "cert_record",
    "event_record",
    "grantees_from_json",
    "grantees_json",
    "token_record",
]

CERT_COLUMNS = (
    "serial, agent_name, not_before, not_after, der, issued_at, token_id, revoked_at, revocation_reason,"
    " ca_generation"
)
# An agent with one certificate (aliases a, c) and that certificate's groups.
AGENT_COLUMNS = (
    "a.name, a.created_at, c.serial, c.agent_name, c.not_before, c.not_after, c.der, c.issued_at, c.token_id,"
    " c.revoked_at, c.revocation_reason, c.groups_json"
)
# Every certificate renewed from one ({parent}: its placeholder), directly or not, oldest first.
DESCENDANTS = (
    "WITH RECURSIVE lineage(serial) AS ("
    " SELECT serial FROM certificates WHERE renewed_from = {parent}"
    " UNION SELECT c.serial FROM certificates c JOIN lineage l ON c.renewed_from = l.serial)"
    " SELECT c.serial, c.agent_name, c.revoked_at, c.revocation_reason FROM certificates c JOIN lineage l ON c.serial = l.serial"
)
EVENT_COLUMNS = "seq, kind, serial, agent_name, key_name, key_version, reason, at, grantees"
TOKEN_COLUMNS = "token_id, secret_hash, name, groups_json, created_at, expires_at, used_at, used_by_serial"  # noqa: S105 - column names
VERSION_COLUMNS = "key_name, version, state, created_at, state_changed_at, deactivated_at, public_key"


def cert_record(row: Any) -> CertificateRecord:
    generation = int(row[9]) if len(row) > 9 and row[9] is not None else 1  # AGENT_COLUMNS has none
    return CertificateRecord(
        row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6], row[7], row[8], generation
    )


def agent_record(row: Any) -> AgentRecord:
    return AgentRecord(row[0], tuple(json.loads(row[11])), row[1], cert_record(row[2:11]))


def event_record(row: Any) -> RevocationEvent:
    return RevocationEvent(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], grantees_from_json(row[8])
    )


def grantees_json(grantees: tuple[str, ...] | None) -> str | None:
    return None if grantees is None else json.dumps(sorted(grantees))


def grantees_from_json(text: str | None) -> tuple[str, ...] | None:
    """The stored grantee list, sorted (the backfill of step 6 wrote it in no particular order)."""
    return None if text is None else tuple(sorted(json.loads(text)))


def token_record(row: Any) -> JoinTokenRecord:
    return JoinTokenRecord(
        row[0], bytes(row[1]), row[2], tuple(json.loads(row[3])), row[4], row[5], row[6], row[7]
    )
