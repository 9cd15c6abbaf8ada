"""kms/audit.py: the chain (unkeyed v1, keyed v2), the first break found for each kind of
tampering, and the checkpoints kept outside the database."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from kms.audit import (
    GENESIS,
    KEYED_ACTION,
    KEYED_ACTOR,
    AuditRecord,
    Break,
    Comparison,
    chain_after,
    check_chain,
    compare,
    extend,
    first_break,
    keyed_object,
    parse_line,
    record_hash,
    record_line,
    record_mac,
)


def _chain(n: int) -> list[AuditRecord]:
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        h = record_hash(prev, seq, 1000 + seq, "admin", "key.create", f"key:k{seq}", "ok")
        out.append(AuditRecord(seq, 1000 + seq, "admin", "key.create", f"key:k{seq}", "ok", prev, h))
        prev = h
    return out


def test_intact_chain() -> None:
    assert first_break(_chain(5)) is None and first_break([]) is None


def test_known_answer() -> None:
    assert record_hash(GENESIS, 1, 0, "a", "b", "c", "ok").hex() == (
        __import__("hashlib")
        .sha256(b"seed-kms audit v1\x00" + GENESIS + (1).to_bytes(8, "big") + (0).to_bytes(8, "big")
                + b"".join(len(x).to_bytes(4, "big") + x for x in (b"a", b"b", b"c", b"ok")))
        .hexdigest()
    )  # fmt: skip


@pytest.mark.parametrize(
    "tamper, expected",
    [
        pytest.param(lambda c: c.__setitem__(2, c[2]._replace(object="key:evil")), 3, id="edited"),
        pytest.param(lambda c: c.__setitem__(0, c[0]._replace(outcome="denied")), 1, id="edited-first"),
        pytest.param(lambda c: c.pop(1), 2, id="deleted"),
        pytest.param(lambda c: c.__setitem__(slice(1, 3), [c[2], c[1]]), 2, id="swapped"),
        pytest.param(lambda c: c.__setitem__(3, c[3]._replace(at=1)), 4, id="redated"),
    ],
)
def test_tampering_names_the_first_bad_record(tamper, expected: int) -> None:  # type: ignore[no-untyped-def]
    chain = _chain(5)
    tamper(chain)
    assert first_break(chain) == expected


# --- the keyed chain (format v2) ---------------------------------------------------

KEY = bytes(range(32))


def _keyed(legacy: int, keyed: int, key: bytes = KEY) -> list[AuditRecord]:
    """legacy v1 records, then the audit.keyed record, then keyed more: a store upgraded in place."""
    entries = [(1000 + i, "admin", "token.create", f"agent:web-{i}", "ok") for i in range(1, legacy + 1)]
    old = extend(None, 0, GENESIS, entries)
    head = (old[-1].seq, old[-1].hash) if old else (0, GENESIS)
    marker = [(2000, KEYED_ACTOR, KEYED_ACTION, keyed_object(legacy + 1), "ok")]
    more = [(3000 + i, "admin", "key.create", f"key:k{i}", "ok") for i in range(keyed)]
    return old + extend(key, *head, marker + more)


def _rehash(chain: list[AuditRecord], start: int, edit: dict[str, str] | None = None) -> list[AuditRecord]:
    """What an intruder without the key can do: edit, then recompute the v1 hashes from start on."""
    out = chain[: start - 1]
    prev = out[-1].hash if out else GENESIS
    for r in chain[start - 1 :]:
        r = r._replace(**(edit or {}) if r.seq == start else {}, prev_hash=prev)
        r = r._replace(hash=record_hash(prev, r.seq, r.at, r.actor, r.action, r.object, r.outcome))
        out.append(r)
        prev = r.hash
    return out


def test_mac_known_answer() -> None:
    body = (
        (1).to_bytes(8, "big")
        + (0).to_bytes(8, "big")
        + b"".join(len(x).to_bytes(4, "big") + x for x in (b"a", b"b", b"c", b"ok"))
    )
    expected = hmac.new(KEY, b"seed-kms audit v2\x00" + GENESIS + body, hashlib.sha256).digest()
    assert record_mac(KEY, GENESIS, 1, 0, "a", "b", "c", "ok") == expected
    with pytest.raises(ValueError, match="32 bytes"):
        record_mac(b"short", GENESIS, 1, 0, "a", "b", "c", "ok")


@pytest.mark.parametrize("legacy", [0, 3], ids=["new-store", "upgraded-store"])
def test_a_keyed_chain_checks_with_its_key_only(legacy: int) -> None:
    chain = _keyed(legacy, 4)
    assert check_chain(chain, KEY, legacy + 1) is None
    assert first_break(chain, KEY, legacy + 1) is None
    found = check_chain(chain, bytes(32), legacy + 1)  # another master key
    assert found is not None and found.seq == legacy + 1 and "MAC" in found.problem


@pytest.mark.parametrize("start", [2, 4, 6], ids=["legacy-part", "keyed-record", "keyed-part"])
def test_an_edit_with_recomputed_hashes_is_caught_wherever_it_is(start: int) -> None:
    chain = _rehash(_keyed(3, 4), start, {"object": "agent:evil-1"})[:-2]  # and the newest two deleted
    found = check_chain(chain, KEY, 4)
    # An edit in the part from before the key is caught where the keyed part begins:
    # the keyed record's MAC covers the hash of the record before it.
    assert found is not None and found.seq == max(start, 4)


@pytest.mark.parametrize(
    "marker, seq, needle",
    [
        pytest.param(None, 1, "marker", id="marker-removed"),
        pytest.param(0, 1, "marker", id="marker-zero"),
        pytest.param(8, 8, "missing", id="marker-past-the-end"),
        pytest.param(6, 6, "edited", id="marker-raised-into-the-trail"),
        pytest.param(2, 2, "edited", id="marker-lowered"),
    ],
)
def test_the_trail_cannot_be_passed_off_as_unkeyed(marker: int | None, seq: int, needle: str) -> None:
    # Everything rehashed as v1, and the marker of where keying began moved or removed.
    chain = _rehash(_keyed(3, 3), 1)
    found = check_chain(chain, KEY, marker)
    assert found is not None and (found.seq, needle in found.problem) == (seq, True), found


def test_the_keyed_chain_must_begin_with_its_record() -> None:
    chain = _keyed(2, 2)
    forged = chain[2]._replace(object="from:9")
    forged = forged._replace(
        hash=record_mac(KEY, forged.prev_hash, 3, forged.at, forged.actor, forged.action, "from:9", "ok"),
    )
    found = check_chain([*chain[:2], forged], KEY, 3)
    assert found is not None and found.seq == 3 and "begin the keyed chain" in found.problem


def test_without_a_key_every_record_is_v1() -> None:
    assert check_chain(_chain(3)) is None
    found = check_chain(_keyed(3, 2))  # a keyed record is no v1 record
    assert isinstance(found, Break) and found.seq == 4


# --- checkpoints outside the database ----------------------------------------------


def test_a_record_line_round_trips_and_syslog_lines_parse() -> None:
    record = _keyed(1, 1)[1]
    line = record_line(record)
    assert "\n" not in line and json.loads(line)["hash"] == record.hash.hex()
    assert parse_line(line) == record
    assert parse_line(f"<38>Jan  1 00:00:00 host seed-kms-audit: {line}\x00") == record


@pytest.mark.parametrize(
    "text, needle",
    [
        ("no json here", "no audit record"),
        ("{not json", "not JSON"),
        ('{"seq": 1}', "exactly the fields"),
        (record_line(_chain(1)[0]).replace('"seq":1', '"seq":"1"'), "numbers"),
        (record_line(_chain(1)[0]).replace('"hash":"', '"hash":"zz'), "hexadecimal"),
    ],
)
def test_a_bad_line_is_refused_saying_why(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_line(text)


def test_compare_against_checkpoints() -> None:
    stored = _keyed(0, 5)  # seqs 1..6
    assert compare(stored, stored) == Comparison(None, 6, 0)
    # The file began later, or other replicas wrote some: counted, not refused.
    assert compare(stored, stored[2:4]) == Comparison(None, 2, 4)
    # The newest records deleted from the store.
    found = compare(stored[:4], stored)
    assert (
        found.difference is not None
        and "records 5..6 are in the file but not in the store" in found.difference
    )
    found = compare(stored[:5], stored)
    assert found.difference is not None and found.difference.startswith("record 6 is in the file")
    # One from the middle (with the chain mended by someone holding the key).
    found = compare(stored[:2] + stored[3:], stored)
    assert (
        found.difference is not None
        and "record 3 is in the file but not in the store: it was deleted" in found.difference
    )
    # Edited.
    edited = [*stored[:3], stored[3]._replace(outcome="denied"), *stored[4:]]
    found = compare(edited, stored)
    assert found.difference == "record 4 differs from the file's copy (outcome)"
    # Two stores' files mixed.
    found = compare(stored, [stored[1], stored[1]._replace(at=1)])
    assert found.difference is not None and "two different records 2" in found.difference


@pytest.mark.parametrize("key", [None, KEY], ids=["v1", "keyed"])
def test_chaining_after_a_carried_head_equals_chaining_all_at_once(key: bytes | None) -> None:
    """A store appends in several steps, carrying the head along: the chain is the same."""
    entries = [(1000 + i, "admin", "key.create", f"key:k{i}", "ok") for i in range(5)]
    at_once = chain_after(key, None, entries)
    assert at_once == extend(key, 0, GENESIS, entries)
    stepwise: list[AuditRecord] = []
    head: tuple[int, bytes] | None = None
    for entry in entries:
        (record,) = chain_after(key, head, [entry])
        stepwise.append(record)
        head = (record.seq, record.hash)
    assert stepwise == at_once
    assert [r.seq for r in at_once] == [1, 2, 3, 4, 5] and at_once[0].prev_hash == GENESIS
    assert first_break(at_once, key, 1 if key else None) == (
        1 if key else None
    )  # keyed: no audit.keyed first
    assert chain_after(key, head, []) == []


def test_chain_after_known_answer() -> None:
    (record,) = chain_after(KEY, (7, b"\x01" * 32), [(1000, "admin", "key.create", "key:k", "ok")])
    assert record.seq == 8 and record.prev_hash == b"\x01" * 32
    assert record.hash == record_mac(KEY, b"\x01" * 32, 8, 1000, "admin", "key.create", "key:k", "ok")
