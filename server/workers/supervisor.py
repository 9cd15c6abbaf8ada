"""kms-server run --workers N: N worker processes on the same ports, kept running by this one.

The supervisor holds the data dir lock and the ports (server/workers/ports.py),
creates the deployment once, starts worker 0 (the primary: it alone serves the
admin socket and the HTTP side port and runs the server-wide timers) and then
the others, and prints the server's ready line once every worker serves. It
relays event positions between them (server/workers/hub.py). A worker that
dies is started again (after a pause that grows while it keeps dying); one
that ends because the shared event log was rewritten stops the whole server,
as a single process does. SIGTERM or SIGINT stop every worker gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

from kms.errors import FailedPrecondition
from server.config import ServerConfig
from server.deployment.datadir import DataDir
from server.workers.hub import Hub
from server.workers.ports import PORTS_ENV, reserve

__all__ = ["MUST_STOP", "ROLE_ENV", "supervise"]

logger = logging.getLogger(__name__)

# How a worker tells the supervisor the whole server must stop (the event log was rewritten).
MUST_STOP = 90  # no KmsError exits with it
# The worker's index, the hub's socket and the supervisor's pid: "INDEX:PID:PATH" (set only in a
# worker's environment, which the worker removes it from).
ROLE_ENV = "SEED_KMS_WORKER"
# A worker's refusal that no restart can fix (FailedPrecondition: a wrong data dir, master key or
# token PIN): the whole server stops with it, as one process would, rather than retry (a wrong
# PIN retried would lock the token).
REFUSED = FailedPrecondition.exit_code
# A worker not serving this long after it was started is ended (and, but at the first start, retried).
START_TIMEOUT = 120.0
# A worker that dies again within this long of starting waits longer before the next start.
_STABLE = 10.0
_MAX_PAUSE = 10.0


class WorkerFailed(Exception):
    """A worker exited before it served."""

    def __init__(self, status: int) -> None:
        super().__init__(f"a worker exited with status {status}")
        self.status = status


class Supervisor:
    def __init__(self, cfg: ServerConfig, datadir: DataDir, argv: list[str]) -> None:
        self._cfg = cfg
        self._argv = argv
        self._hub = Hub(datadir.path / "hub.sock", self._kill)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self.failed = asyncio.Event()  # a worker asked the whole server to stop
        self.status = 1  # the exit status then

    def _environment(self, index: int) -> dict[str, str]:
        cfg = self._cfg
        env = dict(os.environ)
        env[ROLE_ENV] = f"{index}:{os.getpid()}:{self._hub.path}"
        env[PORTS_ENV] = f"{cfg.listen_port},{cfg.enroll_port},{cfg.http_port}"
        return env

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            *self._argv,
            env=self._environment(index),
            stdout=asyncio.subprocess.DEVNULL,
        )
        self._procs[index] = proc
        logger.info("worker started", extra={"worker": index, "pid": proc.pid})
        return proc

    async def _start(self, index: int) -> str:
        """Starts worker index and waits until it serves; its ready line.

        Raises:
            WorkerFailed: it exited first (its own error is on stderr already).
        """
        proc = await self._spawn(index)
        ready = asyncio.ensure_future(self._hub.wait_ready(index))
        exited = asyncio.ensure_future(proc.wait())
        await asyncio.wait({ready, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done() and not exited.done():
            # Its ports are bound already (the kernel hands it connections): a hung start must end.
            logger.error("worker %d did not start within %.0f s: ending it", index, START_TIMEOUT)
            await self._kill(index)
        if not ready.done():
            ready.cancel()
            status = exited.result()
            raise WorkerFailed(status if status and status > 0 else 1)  # a signal's death: 1
        exited.cancel()
        return str(ready.result()["line"])

    async def start(self) -> str:
        """Every worker serving, the primary first (it may reissue the TLS identity the others load)."""
        await self._hub.start()
        line = await self._start(0)
        await asyncio.gather(*(self._start(i) for i in range(1, self._cfg.workers)))
        return line

    async def keep_running(self, index: int) -> None:
        """Restarts worker index whenever it dies, until the server stops."""
        pause = 0.5
        while not self._stopping:
            started = time.monotonic()
            code = await self._procs[index].wait()
            await self._hub.gone(index)
            if self._stopping:
                return
            if code in (MUST_STOP, REFUSED):
                self.status = 1 if code == MUST_STOP else REFUSED
                self.failed.set()
                return
            logger.error("worker %d exited (status %s): starting it again", index, code)
            pause = 0.5 if time.monotonic() - started > _STABLE else min(pause * 2, _MAX_PAUSE)
            await asyncio.sleep(pause)
            if self._stopping:
                return
            with contextlib.suppress(WorkerFailed):  # it died again at start: the loop waits and retries
                await self._start(index)

    async def _kill(self, index: int) -> None:
        """Fail closed: a worker that could not confirm an event ends at once (keep_running restarts it)."""
        proc = self._procs.get(index)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await self._hub.gone(index)

    async def stop(self) -> None:
        """SIGTERM to every worker; those still running after the grace (and a margin) are killed."""
        self._stopping = True
        self._hub.stopping = True
        running = [p for p in self._procs.values() if p.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        patience = self._cfg.shutdown_grace.total_seconds() + 15
        try:
            async with asyncio.timeout(patience):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await self._hub.stop()


async def supervise(cfg: ServerConfig, argv: list[str]) -> int:
    """Runs N workers until SIGTERM or SIGINT (0), or until one says the server must stop (1).

    A new deployment is created by the primary, which starts alone, as one process would
    (under this process's data dir lock): never by N workers at once.
    """
    held, cfg = reserve(cfg)
    datadir = DataDir(cfg.data_dir)
    fresh = not cfg.data_dir.exists()
    datadir.prepare()
    supervisor = Supervisor(cfg, datadir, argv)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        try:
            line = await _until(supervisor.start(), stopping)
        except WorkerFailed as exc:  # its one error line is on stderr already, as one process's would be
            await supervisor.stop()
            if fresh:
                _undo_fresh(datadir)
            return exc.status
        if line is None:  # stopped while starting
            await supervisor.stop()
            return 0
        print(line + f" workers={cfg.workers}", flush=True)
        keepers = [asyncio.ensure_future(supervisor.keep_running(i)) for i in range(cfg.workers)]
        failed = asyncio.ensure_future(supervisor.failed.wait())
        await asyncio.wait(
            {asyncio.ensure_future(stopping.wait()), failed}, return_when=asyncio.FIRST_COMPLETED
        )
        await supervisor.stop()
        for keeper in keepers:
            keeper.cancel()
        print("kms-server stopped", file=sys.stderr, flush=True)
        return supervisor.status if failed.done() else 0
    finally:
        held.close()
        datadir.release()
        (datadir.path / "hub.sock").unlink(missing_ok=True)


def _undo_fresh(datadir: DataDir) -> None:
    """A data dir this start created, left as it found it when the primary failed before creating
    anything (a token refused, a port taken): one process checks those before it makes the dir."""
    datadir.release()
    for name in ("kms.lock", "hub.sock"):
        (datadir.path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: the primary created the deployment, which stays
        datadir.path.rmdir()


async def _until(work: Coroutine[Any, Any, str], stop: asyncio.Event) -> str | None:
    """work's result, or None if stop is set first (work is then cancelled)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        return task.result()
    task.cancel()
    return None
