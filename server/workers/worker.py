"""One worker of several: the whole server on the shared ports, joined to its supervisor.

It serves like the one process does (server/app.py), but it joins the
supervisor's socket before it serves (reading the log up to every event a
worker announced), holds back the answer of each call that committed an event
until every worker applied it, and stops once its supervisor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from pathlib import Path

from kms.cli import tag_logs, use_json_logs
from kms.errors import FailedPrecondition
from server.app import create_server
from server.config import ServerConfig
from server.endpoints.gate import raise_open_file_limit
from server.workers.figures import share_figures
from server.workers.link import WorkerLink, WorkerRole
from server.workers.ports import worker_config
from server.workers.shared import share_limits
from server.workers.supervisor import MUST_STOP, ROLE_ENV

__all__ = ["serve_worker"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2)


def _role(text: str) -> WorkerRole:
    """The role the supervisor gave ("INDEX:PID:PATH"), once checked to be this process's parent.

    Raises:
        FailedPrecondition: the variable was set by hand: without a supervisor a worker would run
            without the data dir lock and hear of no revocation.
    """
    index, pid, hub = text.split(":", 2)
    if int(pid) != os.getppid():
        raise FailedPrecondition(
            f"{ROLE_ENV} is set, but this kms-server was not started by a kms-server supervisor:"
            f" unset {ROLE_ENV} (it is kms-server's own, between its processes)"
        )
    os.environ.pop(ROLE_ENV, None)  # the worker's own children are not workers
    return WorkerRole(int(index), Path(hub))


def _die_with_parent() -> None:
    """Linux: the kernel ends this worker if its supervisor dies without a word (SIGKILL, OOM),
    even while this worker hangs; its socket closing is the first, gentler, notice."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def serve_worker(cfg: ServerConfig, role_text: str) -> int:
    """Serves until SIGTERM or SIGINT, or until the supervisor is gone (0); MUST_STOP once the
    shared event log turns out rewritten (the supervisor then stops every worker)."""
    if cfg.log_format == "json":
        use_json_logs()
    raise_open_file_limit()
    _die_with_parent()  # first: the parent check below then also covers a supervisor gone meanwhile
    link = WorkerLink(_role(role_text))
    tag_logs(worker=link.role.index)  # the workers' lines share the supervisor's stderr
    app = await create_server(worker_config(cfg), link=link)
    await link.connect()
    share_limits(app, link)  # one budget per client and agent, whole-server counts
    share_figures(app, link)  # /metrics and `top` of the whole server, on the primary
    # Wake-ups are answered from now on, while the ports open: a revocation made meanwhile
    # waits for this worker too, and must not find it deaf for the hub's whole bound.
    joined = asyncio.create_task(link.run())
    await app.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    link.ready(line=app.ready_line())
    logger.info("worker serving", extra={"address": app.address})
    signalled = asyncio.create_task(stopping.wait())
    assert app.following is not None
    await asyncio.wait({signalled, app.following, joined}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    failure = None if app.following.cancelled() or not app.following.done() else app.following.exception()
    if failure is not None:
        logger.critical("stopping: %s", failure)
    lost = joined.done()
    if lost:
        logger.error("the supervisor is gone: stopping now (no revocation reaches this worker any more)")
    # Without its supervisor a worker hears of no revocation: every call and stream ends now.
    await app.stop(grace=0.0 if lost else None)
    link.close()
    joined.cancel()
    return MUST_STOP if failure is not None else 0
