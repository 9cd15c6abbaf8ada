"""server/audit/devices.py: the JSON-lines file and syslog copies of each audit record."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest

from kms.audit import AuditRecord, parse_line
from kms.errors import FailedPrecondition
from server.audit.devices import AuditDevices

NOW = 1_800_000_000


def _records(first: int, n: int) -> list[AuditRecord]:
    return [
        AuditRecord(
            s,
            NOW,
            "admin",
            "key.create",
            f"key:k{s}",
            "ok",
            bytes([s % 256]) * 32,
            bytes([(s + 1) % 256]) * 32,
        )
        for s in range(first, first + n)
    ]


def test_the_file_is_created_0600_and_appended_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    devices = AuditDevices(path)
    devices.write(_records(1, 2))
    devices.write(_records(3, 1))
    devices.close()
    assert path.stat().st_mode & 0o777 == 0o600
    again = AuditDevices(path)  # a restart appends
    again.write(_records(4, 1))
    again.close()
    assert [parse_line(line) for line in path.read_text().splitlines()] == _records(1, 4)


@pytest.mark.parametrize(
    "make, needle",
    [
        pytest.param(lambda p: p.parent / "missing" / "audit.jsonl", "cannot open it", id="no-such-dir"),
        pytest.param(
            lambda p: (p.touch(0o600), os.chmod(p, 0o622), p)[2], "writable by other users", id="writable"
        ),
        pytest.param(lambda p: (os.mkfifo(p), p)[1], "not a regular file", id="fifo"),
    ],
)
def test_a_file_that_cannot_be_trusted_stops_the_start(tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path / "audit.jsonl")
    with pytest.raises(FailedPrecondition, match=needle) as caught:
        AuditDevices(path)
    assert "--audit-file" in str(caught.value)


def test_records_go_to_syslog_one_message_each(tmp_path: Path) -> None:
    address = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        devices = AuditDevices(syslog=address)
        devices.write(_records(1, 3))
        messages = [server.recv(65536).decode() for _ in range(3)]
        devices.close()
    # <facility auth (4) * 8 + info (6)> and the tag, then the record.
    assert all(m.startswith("<38>seed-kms-audit: {") for m in messages)
    assert [parse_line(m) for m in messages] == _records(1, 3)


def test_an_unreachable_syslog_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="--audit-syslog .*cannot reach"):
        AuditDevices(tmp_path / "audit.jsonl", syslog=str(tmp_path / "no.sock"))
    assert not (tmp_path / "audit.jsonl").exists() or (tmp_path / "audit.jsonl").read_text() == ""


def test_a_failing_device_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    devices = AuditDevices(syslog=address)
    server.close()
    os.unlink(address)  # syslogd went away
    with caplog.at_level(logging.ERROR, logger="server.audit.devices"):
        devices.write(_records(1, 1))
        devices.write(_records(2, 1))
    assert len([r for r in caplog.records if "syslog" in r.getMessage()]) == 1
    devices.close()


def test_a_torn_last_line_is_cut_off_and_the_newest_whole_record_read(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    devices = AuditDevices(path)
    assert devices.last_in_file is None
    devices.write(_records(1, 2))
    devices.close()
    with path.open("a") as f:
        f.write('{"seq":3,"at":')  # the crash came mid-write
    again = AuditDevices(path)
    assert again.last_in_file == _records(2, 1)[0]
    again.write(_records(3, 1))
    again.close()
    assert [parse_line(line) for line in path.read_text().splitlines()] == _records(1, 3)


def test_a_syslog_that_stops_reading_does_not_stall_the_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stuck:  # bound, never read
        stuck.bind(address)
        devices = AuditDevices(tmp_path / "audit.jsonl", syslog=address)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="server.audit.devices"):
            for i in range(20):
                devices.write(_records(1 + 100 * i, 100))
        elapsed = time.monotonic() - started
        devices.close()
    assert elapsed < 5, f"{elapsed:.1f} s"  # a blocked send times out, then syslog is skipped a while
    assert len([r for r in caplog.records if "syslog" in r.getMessage()]) == 1
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 2000  # the file still has them all
