"""server/endpoints/failures.py, server/endpoints/decoding.py, server/endpoints/gate.py: refusals are counted, not logged or audited one by one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from kms.v1 import enrollment_pb2
from server.endpoints.decoding import NotDecoded, lenient
from server.endpoints.failures import AUDIT_ACTION, FailureReport
from server.endpoints.gate import _address_of, _holder, gate_capacity
from server.store import AuditEntry

WALL = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _report(max_addresses: int = 10_000) -> tuple[FailureReport, list[AuditEntry], _Clock]:
    records: list[AuditEntry] = []
    clock = _Clock()
    report = FailureReport(records.append, 60, clock=clock, wall=lambda: WALL, max_addresses=max_addresses)
    return report, records, clock


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "server.endpoints.failures"]


def test_one_line_per_address_per_interval_with_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    report, _, clock = _report()
    for _ in range(1000):
        report.note("198.51.100.7", "bad-token", "join token refused")
    report.note("203.0.113.9", "undecodable", "garbage")
    assert [(r.__dict__["peer"], r.__dict__["unlogged_since_last"]) for r in _lines(caplog)] == [
        ("198.51.100.7", 0),
        ("203.0.113.9", 0),
    ]
    clock.now += 61
    report.note("198.51.100.7", "bad-token", "join token refused")
    assert _lines(caplog)[-1].__dict__["unlogged_since_last"] == 999


def test_a_burst_that_stops_is_summed_up_when_the_interval_closes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    report, _, clock = _report()
    for _ in range(50):
        report.note("198.51.100.7", "bad-token", "join token refused")
    clock.now += 60
    report.close_interval()
    assert len(_lines(caplog)) == 2 and "49 more" in _lines(caplog)[-1].getMessage()
    clock.now += 60
    report.close_interval()  # nothing new: no line
    assert len(_lines(caplog)) == 2


def test_one_audit_record_per_address_per_interval_with_counts_by_kind() -> None:
    report, records, clock = _report()
    for _ in range(30):
        report.note("198.51.100.7", "bad-token", "x")
    for _ in range(7):
        report.note("198.51.100.7", "undecodable", "x")
    report.note("203.0.113.9", "connection-cap", "x")
    report.note("192.0.2.1", "bad-certificate", "x", anonymous=False)  # logged only
    assert report.close_interval() == 2
    assert records == [
        AuditEntry(
            int(WALL.timestamp()),
            "peer:198.51.100.7",
            AUDIT_ACTION,
            "attempts:37 bad-token:30 undecodable:7 interval:60s",
            "denied",
        ),
        AuditEntry(
            int(WALL.timestamp()),
            "peer:203.0.113.9",
            AUDIT_ACTION,
            "attempts:1 connection-cap:1 interval:60s",
            "denied",
        ),
    ]
    clock.now += 60
    assert report.close_interval() == 0  # a quiet interval writes nothing


def test_addresses_beyond_the_bound_are_counted_together() -> None:
    report, records, _ = _report(max_addresses=2)
    for i in range(10):
        report.note(f"2001:db8::{i}", "idle-connection", "x")
    report.close_interval()
    assert [(r.actor, r.object.split()[0]) for r in records] == [
        ("peer:2001:db8::0", "attempts:1"),
        ("peer:2001:db8::1", "attempts:1"),
        ("peer:*", "attempts:8"),
    ]


def test_lenient_deserializer_hands_on_what_did_not_decode() -> None:
    parse = lenient(enrollment_pb2.EnrollRequest.FromString, "/kms.v1.Enrollment/Enroll")
    assert parse is not None
    assert parse(enrollment_pb2.EnrollRequest(join_token="t").SerializeToString()).join_token == "t"
    bad = parse(b"\xff\xff\xff")
    assert isinstance(bad, NotDecoded) and bad.message_type == "kms.v1.EnrollRequest"
    error = bad.error()
    assert error.code.name == "INVALID_ARGUMENT" and "is not a valid kms.v1.EnrollRequest" in error.message
    assert lenient(None, "/x/Y") is None  # raw bytes: nothing to decode


@pytest.mark.parametrize(
    "peername, address",
    [
        pytest.param(("192.0.2.1", 5000), "192.0.2.1", id="ipv4"),
        pytest.param(("::ffff:192.0.2.1", 5000, 0, 0), "192.0.2.1", id="ipv4-mapped"),
        pytest.param(("2001:db8::1", 5000, 0, 0), "2001:db8::1", id="ipv6"),
        pytest.param(None, "unknown", id="none"),
    ],
)
def test_peer_addresses_count_ipv4_mapped_as_ipv4(peername: object, address: str) -> None:
    assert _address_of(peername) == address


@pytest.mark.parametrize(
    "address, holder",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # another host of the same /64: one holder
        ("unknown", "unknown"),
    ],
)
def test_ipv6_peers_count_per_64(address: str, holder: str) -> None:
    assert _holder(address) == holder


def test_gate_holds_a_share_of_the_descriptor_limit() -> None:
    assert gate_capacity() >= 64
