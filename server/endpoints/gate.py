"""The enrollment port's front door: bounded anonymous connections, and the descriptor budget.

gRPC Python gives no hook per connection, so anybody could hold as many idle
TCP connections to the anonymous port as the process has descriptors, and then
nobody (agents on the mTLS port included) could connect at all. The gate is a
small TCP relay in the server's own event loop on the public enrollment
address. It accepts each connection itself and

- closes it at once when its peer address already holds
  ``per_address`` connections, or when the gate holds ``total`` (a fixed share
  of the descriptor limit, so anonymous connections can never take the
  descriptors the mTLS port and the store need);
- drops it when it sends nothing within ``first_byte_timeout`` (the TLS
  handshake timeout): an idle connection costs one descriptor, and only that long;
- otherwise relays it to the real enrollment gRPC listener on a loopback port
  (whose own handshake timeout then bounds a slow TLS handshake), remembering
  which relay port carries which peer, so that rate limits and logs see the
  real address (``peer_of``).

The mTLS port has no gate: a relay on its hot path would cost every FetchKey,
and a client without a certificate gets no further than a TLS handshake there,
which gRPC drops at the same timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import struct
from collections import Counter
from collections.abc import Callable

from kms.addresses import join_hostport
from kms.errors import FailedPrecondition
from server.endpoints.limits import peer_address
from server.endpoints.relay import Relay
from server.workers.tally import Tally

__all__ = ["AnonymousGate", "gate_capacity", "raise_open_file_limit"]

logger = logging.getLogger(__name__)

# Connections the kernel queues until the gate accepts them (capped by net.core.somaxconn).
_BACKLOG = 4096
# Connections decided on per wake-up of the listener, so that other work runs between batches.
_ACCEPTS_PER_WAKE = 256
# How long accepting pauses when the process is out of descriptors.
_PAUSE = 0.1
_WARN_EVERY = 60.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The gate may hold this fraction of the descriptor limit: a relayed connection
# costs three (the client's, ours to the backend, the backend's accepted one).
_SHARE = 8
_MIN_TOTAL = 64


def raise_open_file_limit() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.

    The usual soft limit (1024) is a compatibility default for select(); a
    server that holds a connection per agent needs the hard limit (systemd:
    LimitNOFILE=).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open
            logger.warning("could not raise the open file limit to %s: %s", target, exc)
    logger.info(
        "open file limit: %s (hard limit %s)",
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
    )
    return int(soft)


def gate_capacity() -> int:
    """How many connections the gate holds at most: a share of the descriptor limit now in force."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(_MIN_TOTAL, int(soft) // _SHARE)


def _address_of(peername: object) -> str:
    """The peer's IP address (an IPv4-mapped IPv6 address as plain IPv4, so both count as one)."""
    host = str(peername[0]) if isinstance(peername, tuple) and peername else "unknown"
    with contextlib.suppress(ValueError):
        mapped = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
            return str(mapped.ipv4_mapped)
    return host


def _holder(address: str) -> str:
    """Who a connection counts against: its IPv4 address, or its IPv6 /64 (the usual smallest
    allocation to one site, so one host cannot take a fresh address per connection)."""
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


class AnonymousGate:
    """Relays connections on the public enrollment address to a backend on loopback, within caps.

    Args:
        host, port: the public address (port 0 picks one; see ``port``).
        per_address: open connections one peer address may hold.
        total: open connections the gate holds at most.
        first_byte_timeout: seconds a new connection may stay silent.
        refused: told of each connection closed by a cap or by the timeout
            (peer address, "connection-cap" or "idle-connection"), for the log and the audit.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        per_address: int,
        total: int,
        first_byte_timeout: float,
        refused: Callable[[str, str], None],
        shared: bool = False,
    ) -> None:
        self._host = host
        self._shared = shared  # workers share the port (SO_REUSEPORT; server/workers/)
        self._requested_port = port
        self._per_address = per_address
        self._total = total
        self._timeout = first_byte_timeout
        self._refused = refused
        self._open: Counter[str] = Counter()
        self._open_total = 0
        # Of several workers (server/workers/shared.py): the others' open connections per
        # holder, which count against per_address too, and who to tell of this one's.
        # The total stays this process's own: it guards this process's descriptors.
        self.elsewhere = Tally()
        self.changed: Callable[[str], None] | None = None
        self._relays: dict[int, str] = {}  # our local port towards the backend -> the real peer address
        self._listeners: list[socket.socket] = []
        self._adopting: set[asyncio.Task[None]] = set()
        self._open_relays: set[Relay] = set()
        self._backend = ("127.0.0.1", 0)
        self._warned_at = float("-inf")
        self.port = 0

    @property
    def open_connections(self) -> int:
        return self._open_total

    def held_here(self, holder: str | None = None) -> dict[str, int]:
        """This worker's open connections of holder (or of every holder)."""
        return dict(self._open) if holder is None else {holder: self._open.get(holder, 0)}

    def peer_of(self, peer: str) -> str:
        """The real address behind a gRPC peer string of the backend ("ipv4:127.0.0.1:PORT")."""
        _, _, port = peer.rpartition(":")
        if port.isdigit() and (real := self._relays.get(int(port))) is not None:
            return real
        return peer_address(peer)  # not relayed by us: a local client of the loopback port

    def bind(self, backend: tuple[str, int]) -> None:
        """Binds the public address (``port`` tells which port); relays to backend once serving.

        Raises:
            FailedPrecondition: the address is in use or not available.
        """
        self._backend = backend
        try:
            self._listeners = self._bind()
        except OSError as exc:
            address = join_hostport(self._host, self._requested_port)
            raise FailedPrecondition(
                f"cannot listen on {address} (--enroll-listen): {exc.strerror or exc}"
            ) from None

    def _bind(self) -> list[socket.socket]:
        """One listening socket per address of the host, all on one port (the first's, for port 0)."""
        infos = socket.getaddrinfo(
            self._host or None, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        port, sockets, seen = self._requested_port, [], set()
        try:
            for family, kind, proto, _, addr in infos:
                if (family, addr[0]) in seen:
                    continue
                seen.add((family, addr[0]))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._shared:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and len(infos) > 1:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], port, *addr[2:]))
                sock.setblocking(False)
                port = sock.getsockname()[1]
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self.port = port
        return sockets

    def start_serving(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            listener.listen(_BACKLOG)
            loop.add_reader(listener, self._accept, listener)

    def stop_listening(self) -> None:
        """No new connections; the open ones go on (in-flight enrollments finish)."""
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.remove_reader(listener)
            listener.close()
        self._listeners = []

    async def stop(self) -> None:
        """Closes the listeners and every open connection."""
        self.stop_listening()
        for task in list(self._adopting):
            task.cancel()
        if self._adopting:
            await asyncio.gather(*self._adopting, return_exceptions=True)
        for relay in list(self._open_relays):
            relay.close(abort=True)  # stopping: do not wait on the peers

    def _accept(self, listener: socket.socket) -> None:
        """Accepts what the kernel queued, deciding on each connection before taking the next.

        Not asyncio's Server: it accepts up to its backlog at once and only then
        runs the handlers, so a flood would take that many descriptors before
        any cap could close one.
        """
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self._pause(listener, exc)
                return
            address = _address_of(peer)
            holder = _holder(address)
            held = self._open[holder] + self.elsewhere.count(holder)
            if held >= self._per_address or self.open_connections >= self._total:
                # Closed at once, with a reset: no FIN handshake to wait for.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                self._refused(address, "connection-cap")
                continue
            self._open[holder] += 1
            self._open_total += 1
            if self.changed is not None:
                self.changed(holder)
            conn.setblocking(False)
            task = asyncio.get_running_loop().create_task(self._adopt(conn, address))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    def _pause(self, listener: socket.socket, exc: OSError) -> None:
        """Out of descriptors (other connections hold them): stop accepting for a moment; the kernel queues."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener)
        if loop.time() - self._warned_at >= _WARN_EVERY:
            self._warned_at = loop.time()
            logger.warning(
                "enrollment connections wait: the process is out of descriptors (%s)", exc.strerror
            )

        def resume() -> None:
            if listener in self._listeners:
                loop.add_reader(listener, self._accept, listener)

        loop.call_later(_PAUSE, resume)

    async def _adopt(self, conn: socket.socket, address: str) -> None:
        """Hands an admitted connection to a relay of its own."""
        relay = Relay(
            self._backend,
            self._timeout,
            on_idle=lambda: self._refused(address, "idle-connection"),
            on_backend=lambda port: self._relayed(port, address),
            on_closed=lambda done: self._closed(done, address),
        )
        self._open_relays.add(relay)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(relay.client_protocol, conn)
        except (OSError, asyncio.CancelledError) as exc:
            conn.close()
            relay.close()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _relayed(self, port: int, address: str) -> None:
        self._relays[port] = address  # before the backend sees a byte of the connection

    def _closed(self, relay: Relay, address: str) -> None:
        """A relay ended: its address may connect once more."""
        self._open_relays.discard(relay)
        if relay.backend_port is not None and self._relays.get(relay.backend_port) == address:
            del self._relays[relay.backend_port]
        holder = _holder(address)
        self._open[holder] -= 1
        self._open_total -= 1
        if self._open[holder] <= 0:
            del self._open[holder]
        if self.changed is not None:
            self.changed(holder)
