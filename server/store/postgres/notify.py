"""Wake-ups from other replicas: LISTEN for the NOTIFY each event sends (postgres/tx.py).

A notification carries nothing but "look at the log": the log stays the
truth, so a notification missed while a listener reconnects costs latency,
never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from server.store.postgres.connect import CONNECTION_ERRORS, SESSION_SETTINGS
from server.store.postgres.tx import CHANNEL

__all__ = ["follow_events"]

logger = logging.getLogger(__name__)

# How often a listener checks its connection (and the log, in case).
PROBE_INTERVAL = 5.0
BACKOFF_MAX = 5.0


async def follow_events(url: str, wake: Callable[[], None], connected: Callable[[bool], None]) -> None:
    """Calls wake() whenever the log may have grown; runs until cancelled.

    LISTENs on its own connection (a pooled one could not keep the
    subscription). After every (re)connect it wakes once, since events may
    have committed while nobody listened; every PROBE_INTERVAL it checks
    the connection and wakes once more, in case. connected(False) while
    the database is unreachable (retried with backoff), then True.
    """
    backoff = 0.2
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=10, server_settings=SESSION_SETTINGS)
        except Exception as exc:  # any failure to connect is an outage here: keep trying
            connected(False)
            logger.warning("cannot listen for events: retrying", extra={"error": type(exc).__name__})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            await conn.add_listener(CHANNEL, lambda *_: wake())
            connected(True)
            backoff = 0.2
            wake()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROBE_INTERVAL):
                        await lost.wait()
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=PROBE_INTERVAL)
                    wake()
        except CONNECTION_ERRORS as exc:
            logger.warning("lost the event listener connection", extra={"error": type(exc).__name__})
        except Exception:  # anything else: still reconnect, never stop listening
            logger.exception("event listener failed: reconnecting")
            await asyncio.sleep(backoff)
        except asyncio.CancelledError:  # the server is stopping: not an outage
            conn.terminate()
            raise
        connected(False)
        conn.terminate()
