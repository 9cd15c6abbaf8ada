"""One connection through the enrollment gate: the client's side and the backend's, as asyncio protocols.

Protocols rather than streams: each chunk goes from one transport to the other
in the callback that received it, with no task switch, which keeps the relay's
cost per enrollment small. Flow control: while one side's write buffer is full,
the other side is not read. The backend connection is made only once the
client has sent its first bytes (its TLS ClientHello), so a silent connection
costs one descriptor, until ``first_byte_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

__all__ = ["Relay"]

# Bytes held from the client while the backend connection is being made.
_MAX_PENDING = 64 * 1024


class Relay:
    """Relays one accepted connection to ``backend``.

    Args:
        backend: the loopback address of the enrollment gRPC server.
        first_byte_timeout: seconds the client may stay silent.
        on_idle: called when the client stayed silent (then the relay closes).
        on_backend: called with our local port towards the backend, before it gets a byte.
        on_closed: called once, when both sides are closed.
    """

    def __init__(
        self,
        backend: tuple[str, int],
        first_byte_timeout: float,
        *,
        on_idle: Callable[[], None],
        on_backend: Callable[[int], None],
        on_closed: Callable[[Relay], None],
    ) -> None:
        self._backend_address = backend
        self._timeout = first_byte_timeout
        self._on_idle = on_idle
        self._on_backend = on_backend
        self._on_closed = on_closed
        self._client: asyncio.Transport | None = None
        self._backend: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.backend_port: int | None = None
        self.closed = False

    def client_protocol(self) -> asyncio.Protocol:
        return _Side(self, client=True)

    # --- the client's side -----------------------------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self._client = transport
        if self.closed:
            transport.abort()
            return
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._idle)

    def _idle(self) -> None:
        self._timer = None
        if self._backend is None and self._connecting is None:
            self._on_idle()
            self.close()

    def from_client(self, data: bytes) -> None:
        if self._backend is not None:
            self._backend.write(data)
            return
        self._pending.append(data)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        if sum(map(len, self._pending)) > _MAX_PENDING and self._client is not None:
            self._client.pause_reading()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Side(self, client=False), *self._backend_address)
        except OSError:
            self.close()

    # --- the backend's side ------------------------------------------------------------

    def backend_made(self, transport: asyncio.Transport) -> None:
        self._backend = transport
        if self.closed:
            transport.abort()
            return
        self.backend_port = int(transport.get_extra_info("sockname")[1])
        self._on_backend(self.backend_port)
        for data in self._pending:
            transport.write(data)
        self._pending.clear()
        if self._client is not None:
            self._client.resume_reading()

    def from_backend(self, data: bytes) -> None:
        if self._client is not None:
            self._client.write(data)

    # --- both --------------------------------------------------------------------------

    def other(self, client: bool) -> asyncio.Transport | None:
        return self._backend if client else self._client

    def close(self, *, abort: bool = False) -> None:
        """Closes both sides (abort: without flushing what they have not sent yet)."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        for transport in (self._client, self._backend):
            if transport is not None:
                if abort:
                    transport.abort()
                else:
                    transport.close()
        self._on_closed(self)


class _Side(asyncio.Protocol):
    """One transport of a relay: what it receives goes to the other, and either closing closes both."""

    def __init__(self, relay: Relay, *, client: bool) -> None:
        self._relay = relay
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if self._client:
            self._relay.client_made(transport)
        else:
            self._relay.backend_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._client:
            self._relay.from_client(data)
        else:
            self._relay.from_backend(data)

    def eof_received(self) -> bool:
        return False  # gRPC does not half-close: the end of one side ends the relay

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.close()

    def pause_writing(self) -> None:  # this side's send buffer is full: stop reading the other
        other = self._relay.other(self._client)
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self._relay.other(self._client)
        if other is not None:
            other.resume_reading()
