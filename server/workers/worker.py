"""One worker of several: the whole server on the shared ports, joined to its supervisor.

It serves like the one process does (server/app.py), but it joins the
supervisor's socket before it serves (reading the log up to every event a
worker announced), holds back the answer of each call that committed an event
until every worker applied it, and stops once its supervisor is gone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from kms.cli import use_json_logs
from server.app import create_server
from server.config import ServerConfig
from server.endpoints.gate import raise_open_file_limit
from server.workers.figures import share_figures
from server.workers.link import WorkerLink, WorkerRole
from server.workers.ports import worker_config
from server.workers.shared import share_limits
from server.workers.supervisor import MUST_STOP

__all__ = ["serve_worker"]

logger = logging.getLogger(__name__)


async def serve_worker(cfg: ServerConfig, role_text: str) -> int:
    """Serves until SIGTERM or SIGINT, or until the supervisor is gone (0); MUST_STOP once the
    shared event log turns out rewritten (the supervisor then stops every worker)."""
    if cfg.log_format == "json":
        use_json_logs()
    raise_open_file_limit()
    index, _, hub = role_text.partition(":")
    link = WorkerLink(WorkerRole(int(index), Path(hub)))
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
    logger.info("worker serving", extra={"worker": link.role.index, "address": app.address})
    signalled = asyncio.create_task(stopping.wait())
    assert app.following is not None
    await asyncio.wait({signalled, app.following, joined}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    failure = None if app.following.cancelled() or not app.following.done() else app.following.exception()
    if failure is not None:
        logger.critical("stopping: %s", failure)
    elif joined.done():
        logger.error("the supervisor is gone: stopping")
    await app.stop()
    link.close()
    joined.cancel()
    return MUST_STOP if failure is not None else 0
