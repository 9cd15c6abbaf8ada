"""Makes a batch committed on the event loop durable, without another thread of this process.

Why a process and not a thread: a batch's statements cost the loop less than handing them to
the store thread, and the store thread's wait for the GIL made every GIL release of the
loop a futex wake (bench/RESULTS.md, "Issue 20: the store thread's GIL"). A thread that only
fdatasyncs still needs the GIL to say so. So the loop commits small batches itself with
``synchronous=NORMAL`` (the WAL is written, not synced) and asks this child process, over a
pipe, to fdatasync the WAL; the loop hears the answer as it hears a socket. The batch is
acknowledged only then, as durable as with ``synchronous=FULL``. The child also runs the
checkpoints SQLite would otherwise run inside a COMMIT (walsync_process.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from server.store.sqlite import walsync_process

__all__ = ["WalSyncer"]

logger = logging.getLogger(__name__)

Done = Callable[[OSError | None], None]


class WalSyncer:
    """One sync at a time; ``done`` runs on the loop with None, or the sync's error.

    ``broken`` once the child is gone: the caller syncs another way (commit.py).
    """

    def __init__(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._proc = proc
        self._loop = loop
        assert proc.stdin is not None and proc.stdout is not None
        self._request = proc.stdin.fileno()
        self._reply = proc.stdout.fileno()
        os.set_blocking(self._reply, False)
        self._pending: Done | None = None
        self.broken = False
        loop.add_reader(self._reply, self._on_reply)

    @classmethod
    def start(cls, db: Path) -> WalSyncer | None:
        """The syncer of the store at db, or None (logged) if its process cannot start."""
        script = walsync_process.__file__
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", script, str(db)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                env={},  # it needs nothing, and the server's may hold secrets (KMS_MASTER_KEY, PGPASSWORD)
            )
        except OSError as exc:
            logger.warning("the WAL syncer did not start (%s): every batch commits on the store thread", exc)
            return None
        return cls(proc, asyncio.get_running_loop())

    def sync(self, done: Done) -> None:
        """Asks for one fdatasync of the WAL; done(None) once it is on disk."""
        assert self._pending is None, "one sync at a time"
        self._pending = done
        try:
            os.write(self._request, b"s")
        except OSError:
            self._fail()

    def _on_reply(self) -> None:
        try:
            data = os.read(self._reply, walsync_process.REPLY.size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if len(data) != walsync_process.REPLY.size:  # EOF: the child died (pipe replies are atomic)
            self._fail()
            return
        (status,) = walsync_process.REPLY.unpack(data)
        done, self._pending = self._pending, None
        if done is not None:
            done(None if status == 0 else OSError(-status, os.strerror(-status)))

    def _fail(self) -> None:
        if not self.broken:
            logger.error("the WAL syncer exited: every batch commits on the store thread from now on")
        self.broken = True
        self._loop.remove_reader(self._reply)
        self._proc.poll()  # reaped, if it has exited
        done, self._pending = self._pending, None
        if done is not None:
            done(OSError(errno.EPIPE, "the WAL syncer exited"))

    def close(self) -> None:
        """Ends the child (it exits when its stdin closes) and waits for it (for at most 5 s,
        which only a checkpoint in progress takes; the server is stopping)."""
        if not self.broken:
            self._loop.remove_reader(self._reply)
        self.broken = True
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
