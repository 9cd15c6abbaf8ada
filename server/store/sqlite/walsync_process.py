"""The WAL syncer's own process: makes the store's committed batches durable (walsync.py).

Run by path, with the standard library only (``python -I -S walsync_process.py DB``),
so that it starts in milliseconds and shares nothing with the server but the files.
For each byte read on stdin it fdatasyncs the store's WAL and answers with 8 bytes:
0, or the errno of a failed sync (negated). When the WAL has grown past
CHECKPOINT_BYTES it then checkpoints it (PASSIVE: it waits for no reader or
writer) from its own connection, after answering, so no commit waits on a checkpoint.
It exits when stdin closes: when the server closes the store, or dies (it ignores SIGINT and
SIGTERM).
"""

from __future__ import annotations

import signal

# First: a Ctrl-C at the server's terminal, or systemd's SIGTERM to the whole unit, reaches this
# process too; the server decides when it ends (it closes stdin).
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)

import os  # noqa: E402 - after the signals, which a slow start must not miss
import pathlib  # noqa: E402
import sqlite3  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

# SQLite's own default (wal_autocheckpoint=1000 pages of 4 KiB), which the server turns off.
CHECKPOINT_BYTES = 1000 * 4096

REPLY = struct.Struct("<q")


class Wal:
    """The WAL of the store at db_path, opened again whenever it is a new file at its path."""

    def __init__(self, db_path: str) -> None:
        # Where SQLite puts it: beside the database file, symbolic links resolved.
        self._path = os.path.realpath(db_path) + "-wal"
        self._fd: int | None = None

    def sync(self) -> int:
        """Syncs the WAL's data (after a COMMIT it exists; if not, the OSError says so); its size."""
        current = os.stat(self._path)
        if self._fd is None or os.fstat(self._fd).st_ino != current.st_ino:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        # fdatasync flushes the file, whichever descriptor wrote it.
        os.fdatasync(self._fd)
        return os.fstat(self._fd).st_size

    @staticmethod
    def checkpoint_due(size: int) -> bool:
        # A PASSIVE checkpoint does not shrink the file (the WAL is reused from its start once a
        # checkpoint has caught up), so past CHECKPOINT_BYTES every sync is followed by one: each
        # is then short, and one soon catches up between two batches, so the WAL restarts.
        return size > CHECKPOINT_BYTES


def _checkpoint(db_path: str, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
    try:
        if conn is None:
            uri = pathlib.Path(os.path.realpath(db_path)).as_uri() + "?mode=rw"  # never creates it
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:  # the next sync tries again; the WAL only grows meanwhile
        print(f"kms-server WAL syncer: checkpoint failed: {exc}", file=sys.stderr, flush=True)
    return conn


def main(db_path: str) -> int:
    wal = Wal(db_path)
    conn: sqlite3.Connection | None = None
    while True:
        if not os.read(0, 1):
            return 0
        try:
            size, status = wal.sync(), 0
        except OSError as exc:
            size, status = 0, -(exc.errno or 1)
        try:
            os.write(1, REPLY.pack(status))
        except OSError:  # the server is gone
            return 0
        if wal.checkpoint_due(size):
            conn = _checkpoint(db_path, conn)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
