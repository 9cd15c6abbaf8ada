"""The audit trail's chain, its checks, and the checkpoints kept outside the database.

Each record is chained to the one before it. Since the chain was keyed, a
record's ``hash`` is an HMAC-SHA256 under a key derived from the master key,
which the database does not hold: whoever can write the database can edit,
delete or reorder records, but cannot recompute the MACs, so ``check_chain``
names the first record touched. Records written before a store was upgraded
to the keyed chain keep their plain SHA-256 hashes (format v1) and are checked
as before; the record at ``keyed_from`` (an ``audit.keyed`` record, keyed)
marks where keying began, and its MAC covers the v1 chain before it.

Deleting the newest records leaves a shorter chain that still checks; the
checkpoints (one JSON line per record, written outside the database as each
record commits) catch that: ``compare`` names the first record they hold that
the store lacks or holds differently.

Pure: bytes and values in, values out (STYLE rule 4).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "GENESIS",
    "KEYED_ACTION",
    "KEYED_ACTOR",
    "AuditRecord",
    "Break",
    "Comparison",
    "chain_after",
    "check_chain",
    "compare",
    "extend",
    "first_break",
    "keyed_object",
    "parse_line",
    "record_hash",
    "record_line",
    "record_mac",
]

GENESIS = bytes(32)
_CONTEXT = b"seed-kms audit v1\x00"  # unkeyed SHA-256 (records from before the keyed chain)
_KEYED_CONTEXT = b"seed-kms audit v2\x00"  # HMAC-SHA256 under the chain key
KEY_BYTES = 32

# The record that begins the keyed chain (its object names its own seq).
KEYED_ACTOR = "server"
KEYED_ACTION = "audit.keyed"


def keyed_object(seq: int) -> str:
    return f"from:{seq}"


class AuditRecord(NamedTuple):
    # A tuple: one is built and inserted per key release, on the store's thread.
    seq: int
    at: int
    actor: str
    action: str
    object: str
    outcome: str
    prev_hash: bytes
    hash: bytes


# What to append: (at, actor, action, object, outcome).
Entry = tuple[int, str, str, str, str]


_HEAD = struct.Struct(">qqI").pack  # seq, at, and the first field's length
_LENGTH = struct.Struct(">I").pack


def _body(seq: int, at: int, actor: str, action: str, obj: str, outcome: str) -> bytes:
    """seq and at, then each text field UTF-8 encoded after its 4-byte length."""
    a, b, c, d = actor.encode(), action.encode(), obj.encode(), outcome.encode()
    return b"".join((_HEAD(seq, at, len(a)), a, _LENGTH(len(b)), b, _LENGTH(len(c)), c, _LENGTH(len(d)), d))


@lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with the key already absorbed, to copy for each record (a server has one key)."""
    return hmac.new(key, digestmod="sha256")


def record_hash(
    prev_hash: bytes, seq: int, at: int, actor: str, action: str, obj: str, outcome: str
) -> bytes:
    """Format v1, unkeyed: SHA-256 over the previous hash and the record."""
    return hashlib.sha256(_CONTEXT + prev_hash + _body(seq, at, actor, action, obj, outcome)).digest()


def record_mac(
    key: bytes, prev_hash: bytes, seq: int, at: int, actor: str, action: str, obj: str, outcome: str
) -> bytes:
    """Format v2, keyed: HMAC-SHA256 under the chain key over the previous MAC (or hash) and the record."""
    if len(key) != KEY_BYTES:
        raise ValueError("the audit chain key must be 32 bytes")
    # A copy of the keyed state: the same MAC as hmac.digest(key, ...), without hashing the
    # key's pads again (one record per key release, on the store's thread).
    mac = _keyed(key).copy()
    mac.update(_KEYED_CONTEXT + prev_hash + _body(seq, at, actor, action, obj, outcome))
    return mac.digest()


def extend(key: bytes | None, last_seq: int, last_hash: bytes, entries: Iterable[Entry]) -> list[AuditRecord]:
    """The records that follow (last_seq, last_hash) for entries, in order.

    Both store backends append with this, under their own lock on the chain's
    head. key None writes format v1: only stores that have no key (tests and
    tools); a server always has it, and verification refuses v1 from keyed_from on.
    """
    out: list[AuditRecord] = []
    seq, prev = last_seq, last_hash
    for at, actor, action, obj, outcome in entries:
        seq += 1
        digest = (
            record_hash(prev, seq, at, actor, action, obj, outcome)
            if key is None
            else record_mac(key, prev, seq, at, actor, action, obj, outcome)
        )
        out.append(AuditRecord(seq, at, actor, action, obj, outcome, prev, digest))
        prev = digest
    return out


def chain_after(
    key: bytes | None, head: tuple[int, bytes] | None, entries: Iterable[Entry]
) -> list[AuditRecord]:
    """The records that follow the trail's newest record, head (its seq and hash; None: the trail is empty).

    The one way a store chains what it appends (server/store/sql/audit.py, for
    both backends): it reads the head under its own lock, or carries it along
    within one transaction, and inserts what this returns.
    """
    seq, prev = head if head is not None else (0, GENESIS)
    return extend(key, seq, prev, entries)


@dataclass(frozen=True)
class Break:
    """The first record that does not check, and what is wrong there."""

    seq: int
    problem: str


def _expected(r: AuditRecord, key: bytes | None) -> bytes:
    fields = (r.prev_hash, r.seq, r.at, r.actor, r.action, r.object, r.outcome)
    return record_hash(*fields) if key is None else record_mac(key, *fields)


def check_chain(
    records: Iterable[AuditRecord], key: bytes | None = None, keyed_from: int | None = None
) -> Break | None:
    """The first record that does not chain, or None.

    Args:
        records: the whole trail, in order of seq.
        key: the chain key; None checks every record as format v1 (a store
            that was never keyed: tests and tools).
        keyed_from: with a key, the seq from which records are keyed (the
            store's marker); the record there must be the ``audit.keyed``
            record, and the trail must reach it. None: the marker is missing
            or unreadable, which only tampering makes.
    """
    if key is not None and keyed_from is None:
        return Break(1, "the marker of where the keyed chain begins is missing or altered")
    if key is not None and keyed_from is not None and keyed_from < 1:
        return Break(1, "the marker of where the keyed chain begins is altered")
    expected_seq, prev = 1, GENESIS
    for r in records:
        if r.seq != expected_seq:
            missing = expected_seq if r.seq > expected_seq else r.seq
            return Break(missing, f"record {missing} is missing or out of order")
        if not hmac.compare_digest(r.prev_hash, prev):
            return Break(r.seq, f"record {r.seq} does not follow record {r.seq - 1}")
        keyed = key is not None and keyed_from is not None and r.seq >= keyed_from
        if not hmac.compare_digest(r.hash, _expected(r, key if keyed else None)):
            return Break(
                r.seq, f"record {r.seq} was edited (its {'MAC' if keyed else 'hash'} does not match)"
            )
        if (
            keyed
            and r.seq == keyed_from
            and (r.actor, r.action, r.object)
            != (
                KEYED_ACTOR,
                KEYED_ACTION,
                keyed_object(r.seq),
            )
        ):
            return Break(r.seq, f"record {r.seq} should begin the keyed chain, and does not")
        expected_seq, prev = r.seq + 1, r.hash
    if key is not None and keyed_from is not None and expected_seq <= keyed_from:
        # The keyed chain begins with a record the server writes at its first start:
        # a trail that stops short of it lost its newest records.
        return Break(
            expected_seq,
            f"records from {expected_seq} on are missing (the keyed chain begins at {keyed_from})",
        )
    return None


def first_break(
    records: Iterable[AuditRecord], key: bytes | None = None, keyed_from: int | None = None
) -> int | None:
    """The sequence number of the first record that does not chain, or None if all do."""
    found = check_chain(records, key, keyed_from)
    return None if found is None else found.seq


# --- checkpoints outside the database -------------------------------------------------

_FIELDS = ("seq", "at", "actor", "action", "object", "outcome", "prev_hash", "hash")


def record_line(r: AuditRecord) -> str:
    """One record as one JSON line (no newline), as --audit-file and syslog carry it."""
    return json.dumps(
        {
            "seq": r.seq,
            "at": r.at,
            "actor": r.actor,
            "action": r.action,
            "object": r.object,
            "outcome": r.outcome,
            "prev_hash": r.prev_hash.hex(),
            "hash": r.hash.hex(),
        },
        separators=(",", ":"),
    )


def parse_line(text: str) -> AuditRecord:
    """A record from a line of an audit file, or of syslog (the JSON from the first '{'). Raises ValueError."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no audit record in it")
    try:
        data = json.loads(text[start:].rstrip("\x00\r\n "))  # syslog datagrams may end in NUL
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        raise ValueError(f"an audit record has exactly the fields {', '.join(_FIELDS)}")
    ints = [data[k] for k in ("seq", "at")]
    texts = [data[k] for k in ("actor", "action", "object", "outcome", "prev_hash", "hash")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or not all(
        isinstance(v, str) for v in texts
    ):
        raise ValueError("seq and at must be numbers, the other fields strings")
    try:
        prev, digest = bytes.fromhex(data["prev_hash"]), bytes.fromhex(data["hash"])
    except ValueError:
        raise ValueError("prev_hash and hash must be hexadecimal") from None
    return AuditRecord(
        data["seq"], data["at"], data["actor"], data["action"], data["object"], data["outcome"], prev, digest
    )


@dataclass(frozen=True)
class Comparison:
    difference: str | None  # the first, in words; None: every checkpoint is in the store, unchanged
    matched: int  # checkpoints found in the store as they are
    not_in_file: int  # store records the checkpoints lack (other replicas, before or after the file)


def _differing_field(a: AuditRecord, b: AuditRecord) -> str:
    for name in _FIELDS:
        if getattr(a, name) != getattr(b, name):
            return name
    return "none"


def compare(stored: Iterable[AuditRecord], checkpoints: Sequence[AuditRecord]) -> Comparison:
    """Cross-checks the store's trail against checkpoints kept outside it.

    Every checkpoint must be in the store, identical: one the store lacks was
    deleted (the newest ones, if it is past the store's end), one that differs
    was edited. Store records the checkpoints lack are counted, not refused:
    another replica wrote them, or the file was started later or copied earlier.
    """
    wanted: dict[int, AuditRecord] = {}
    for checkpoint in checkpoints:
        if wanted.setdefault(checkpoint.seq, checkpoint) != checkpoint:
            return Comparison(
                f"the file holds two different records {checkpoint.seq} (from two stores?)", 0, 0
            )
    matched = extra = 0
    last = 0
    first_difference: tuple[int, str] | None = None
    for r in stored:
        last = max(last, r.seq)
        c = wanted.pop(r.seq) if r.seq in wanted else None
        if c is None:
            extra += 1
        elif c == r:
            matched += 1
        elif first_difference is None:
            first_difference = (
                r.seq,
                f"record {r.seq} differs from the file's copy ({_differing_field(r, c)})",
            )
    if wanted:
        seq = min(wanted)
        if first_difference is None or seq < first_difference[0]:
            newest = max(wanted)
            if seq > last:
                what = f"records {seq}..{newest} are" if newest > seq else f"record {seq} is"
                first_difference = (
                    seq,
                    f"{what} in the file but not in the store: the newest records were deleted",
                )
            else:
                first_difference = (seq, f"record {seq} is in the file but not in the store: it was deleted")
    return Comparison(None if first_difference is None else first_difference[1], matched, extra)
