"""The audit trail's chain: each record is hashed with the previous record's hash (SHA-256).

Editing, deleting or reordering any record breaks the chain at that record,
and ``first_break`` names its sequence number. (Removing records from the
end leaves a shorter valid chain; compare ``audit list`` against a copy kept
elsewhere to catch that.)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GENESIS", "AuditRecord", "first_break", "record_hash"]

GENESIS = bytes(32)
_CONTEXT = b"seed-kms audit v1\x00"


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: int
    actor: str
    action: str
    object: str
    outcome: str
    prev_hash: bytes
    hash: bytes


def _field(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data


def record_hash(
    prev_hash: bytes, seq: int, at: int, actor: str, action: str, obj: str, outcome: str
) -> bytes:
    body = struct.pack(">qq", seq, at) + b"".join(_field(f) for f in (actor, action, obj, outcome))
    return hashlib.sha256(_CONTEXT + prev_hash + body).digest()


def first_break(records: Iterable[AuditRecord]) -> int | None:
    """The sequence number of the first record that does not chain, or None if all do."""
    expected_seq, prev = 1, GENESIS
    for r in records:
        if r.seq != expected_seq or r.prev_hash != prev:
            return expected_seq if r.seq > expected_seq else r.seq
        if r.hash != record_hash(r.prev_hash, r.seq, r.at, r.actor, r.action, r.object, r.outcome):
            return r.seq
        expected_seq, prev = r.seq + 1, r.hash
    return None
