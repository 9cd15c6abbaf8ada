"""kms/audit.py: the chain, and the first break found for each kind of tampering."""

from __future__ import annotations

import dataclasses

import pytest

from kms.audit import GENESIS, AuditRecord, first_break, record_hash


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
        pytest.param(
            lambda c: c.__setitem__(2, dataclasses.replace(c[2], object="key:evil")), 3, id="edited"
        ),
        pytest.param(
            lambda c: c.__setitem__(0, dataclasses.replace(c[0], outcome="denied")), 1, id="edited-first"
        ),
        pytest.param(lambda c: c.pop(1), 2, id="deleted"),
        pytest.param(lambda c: c.__setitem__(slice(1, 3), [c[2], c[1]]), 2, id="swapped"),
        pytest.param(lambda c: c.__setitem__(3, dataclasses.replace(c[3], at=1)), 4, id="redated"),
    ],
)
def test_tampering_names_the_first_bad_record(tamper, expected: int) -> None:  # type: ignore[no-untyped-def]
    chain = _chain(5)
    tamper(chain)
    assert first_break(chain) == expected
