"""Audit devices: every committed audit record copied outside the database, as it commits.

The keyed chain (kms/audit.py) shows any edit of the records the store holds,
but not the loss of the newest ones: a shorter chain still checks. So each
record is also written where whoever rewrites the database cannot reach:

- ``--audit-file PATH``: one JSON line per record, appended (O_APPEND) and
  fsync'd, the file created 0600. ``kms-server audit verify --against PATH``
  cross-checks the store against it.
- ``--audit-syslog SOCKET``: one syslog message per record (facility auth,
  tag ``seed-kms-audit``) to a local syslog socket such as /dev/log, so a
  log shipper can carry it off the machine.

The store hands each commit's records here after COMMIT and before any write
of that commit is acknowledged (server/store/sqlite/commit.py, postgres/backend.py),
in the order of their seqs. So a record whose action was answered is in the
file already; what a crash can leave out is the commit in progress, and
exchange records still waiting in the AuditBatcher (about 10 ms). A device
that fails is logged (once until it works again) and does not fail the
action: the record is committed in the store already. A syslog daemon that
stops reading costs at most half a second, then is skipped for five.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Sequence
from logging.handlers import SysLogHandler
from pathlib import Path

from kms.audit import AuditRecord, parse_line, record_line
from kms.errors import FailedPrecondition

__all__ = ["AuditDevices"]

logger = logging.getLogger(__name__)

SYSLOG_TAG = "seed-kms-audit"


# A syslog daemon that stops reading must not stall the store's writes: a send
# waits at most this long, and after a failure syslog is skipped for a while.
_SEND_TIMEOUT = 0.5
_SYSLOG_BACKOFF = 5.0


class _Syslog(SysLogHandler):
    """A SysLogHandler that reports failures to its owner instead of printing a traceback."""

    failed = False

    def _connect_unixsocket(self, address: str) -> None:
        super()._connect_unixsocket(address)  # type: ignore[misc]
        self.socket.settimeout(_SEND_TIMEOUT)  # type: ignore[attr-defined]

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed = True


class AuditDevices:
    def __init__(self, file: Path | None = None, syslog: str | None = None) -> None:
        """Opens the devices, or raises FailedPrecondition naming the setting (nothing is left open)."""
        self._path = file
        self._fd: int | None = None
        self._syslog: _Syslog | None = None
        self._broken: set[str] = set()  # devices whose failure was logged and not yet cleared
        self._lock = threading.Lock()  # one write at a time, whichever thread calls
        self._last: AuditRecord | None = None  # the file's newest record when it was opened
        self._syslog_paused_until = 0.0
        if file is not None:
            self._fd = _open_file(file)
            self._last = _mend_tail(self._fd, file)
        if syslog is not None:
            try:
                _probe(syslog)
            except OSError as exc:
                self.close()
                raise FailedPrecondition(
                    f"--audit-syslog {syslog}: cannot reach the syslog socket ({exc.strerror or exc}); "
                    "give the path of a local syslog socket such as /dev/log"
                ) from None
            # It reconnects by itself when syslogd restarts.
            handler = _Syslog(address=syslog, facility=SysLogHandler.LOG_AUTH)
            handler.ident = f"{SYSLOG_TAG}: "
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._syslog = handler

    @property
    def enabled(self) -> bool:
        return self._fd is not None or self._syslog is not None

    @property
    def last_in_file(self) -> AuditRecord | None:
        """The newest record the audit file held at start (None: no file, or an empty one)."""
        return self._last

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Copies records to every device; never raises (failures are logged)."""
        lines = [record_line(r) for r in records]
        with self._lock:
            if self._fd is not None:
                self._write_file(("\n".join(lines) + "\n").encode())
            if self._syslog is not None:
                self._send_syslog(lines)

    def _write_file(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            self._failed("file", f"cannot append to the audit file {self._path}: {exc.strerror}")
        else:
            self._recovered("file")

    def _send_syslog(self, lines: list[str]) -> None:
        assert self._syslog is not None
        if time.monotonic() < self._syslog_paused_until:
            return
        self._syslog.failed = False
        for line in lines:
            self._syslog.emit(
                logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"})
            )
            if self._syslog.failed:
                self._syslog_paused_until = time.monotonic() + _SYSLOG_BACKOFF
                self._failed("syslog", "cannot send audit records to syslog (trying again every few seconds)")
                return
        self._recovered("syslog")

    def _failed(self, device: str, message: str) -> None:
        if device not in self._broken:
            self._broken.add(device)
            logger.error(
                "%s: records are committed in the store but missing there until it works again", message
            )

    def _recovered(self, device: str) -> None:
        if device in self._broken:
            self._broken.discard(device)
            logger.warning("the audit %s works again", device)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._syslog is not None:
                self._syslog.close()
                self._syslog = None


def _probe(path: str) -> None:
    """Raises OSError unless a syslog daemon listens at path (datagram or stream, as SysLogHandler tries)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return
            except OSError as exc:
                if kind == socket.SOCK_STREAM or exc.errno != errno.EPROTOTYPE:
                    raise


_TAIL = 1 << 16  # far more than one record


def _mend_tail(fd: int, path: Path) -> AuditRecord | None:
    """Cuts a torn last line (a crash while it was written) and returns the newest whole record.

    A torn record is one the file lacks, which is the direction verify does not
    refuse (its record is in the store, or was never committed).
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL)
    tail = os.pread(fd, size - start, start)
    if not tail.endswith(b"\n"):
        keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        os.ftruncate(fd, keep)
        logger.warning(
            "the audit file %s ended in a partial record (a crash while writing it): cut it off", path
        )
        tail = tail[: keep - start] if keep > start else b""
    lines = tail.splitlines()
    if not lines or (start > 0 and len(lines) == 1):
        return None
    try:
        return parse_line(lines[-1].decode())
    except (ValueError, UnicodeDecodeError):
        return None  # not ours to judge here: audit verify --against names the line


def _open_file(path: Path) -> int:
    """Opens path for appending, creating it 0600; refuses what others could rewrite."""
    try:
        # O_RDWR to mend a torn tail; O_NONBLOCK so that no special file can hang the start.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise FailedPrecondition(f"--audit-file {path}: cannot open it ({exc.strerror})") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_mode & 0o022:
        problem = f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o}): chmod go-w it"
    if problem:
        os.close(fd)
        raise FailedPrecondition(f"--audit-file {path} {problem}")
    os.set_blocking(fd, True)
    return fd
