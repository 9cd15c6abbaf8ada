"""The CAs this server accepts agents' certificates from (issue 19 §1): every generation not retired.

That is the active CA, a prepared one, and (once activation exists) an old one that still
has valid certificates out. A prepared CA issues nothing, but trusting it from the moment
it is prepared means that when any replica activates it, the others already accept what
it issues, before they hear of the activation; its key never left the store, sealed.
The set is read from the store at start and again on each 'bundle' event (this replica's
or another's, from the feed), and handed to each listener: the caller authenticator, the
handshake peers' check and the mTLS port's client CA list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from cryptography import x509

from server.store import RevocationEvent, Store

__all__ = ["CATrust"]

logger = logging.getLogger(__name__)

Listener = Callable[[Sequence[x509.Certificate]], None]


class CATrust:
    def __init__(self, store: Store, own: Callable[[], x509.Certificate]) -> None:
        self._store = store
        self._own = own  # the CA this server issues with (it changes when it follows an activation)
        self.roots: list[x509.Certificate] = [own()]
        self._listeners: list[Listener] = []
        self._before: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = asyncio.Lock()  # one read at a time: an older one never lands after a newer

    def listen(self, *listeners: Listener) -> None:
        """Each listener gets the roots now, and again each time they change."""
        for listener in listeners:
            self._listeners.append(listener)
            listener(self.roots)

    def on_bundle(self, hook: Callable[[], Awaitable[None]]) -> None:
        """hook runs on each 'bundle' event, before the roots are re-read (CARotation.follow)."""
        self._before.append(hook)

    async def refresh(self) -> None:
        """Reads the generations not retired; the CA this server issues with is always among them."""
        async with self._reading:
            generations = await self._store.ca_generations(None)
            certs = [g.certificate for g in generations if g.state != "retired"]
            read = [x509.load_pem_x509_certificate(pem.encode()) for pem in certs]
            own = self._own()
            roots = [own, *[r for r in read if r != own]]
            if roots == self.roots:
                return
            self.roots = roots
            logger.info("accepting agents of %d CA generations", len(roots))
            for listener in self._listeners:
                listener(roots)

    def published(self, event: RevocationEvent) -> None:
        """A feed listener: a 'bundle' event (a generation prepared, activated or retired) re-reads them."""
        if event.kind != "bundle":
            return
        task = asyncio.create_task(self._refresh_logged())
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _refresh_logged(self) -> None:
        try:
            for hook in self._before:
                await hook()
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - the store unreachable: the next event or start reads again
            logger.error("could not follow the CA generations: %s: %s", type(exc).__name__, exc)
