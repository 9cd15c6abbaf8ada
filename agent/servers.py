"""Several addresses of one deployment, and the one rule for moving between them.

Replicas of a deployment sit behind one CA and share one database, so any of
them can answer any call and the revocation log's sequence numbers are the
same on each. The agent keeps their addresses in order of preference and
sends each call to the one that answered last (the first, at start). Only
UNAVAILABLE -- connection refused, a failed TLS handshake, a server that went
away -- moves a call on to the next address: every other status is the
deployment's answer, and asking another replica would only repeat it (or, for
a single-use join token, do harm).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from kms.addresses import join_hostport, parse_hostport
from kms.errors import InvalidArgument, Unavailable

__all__ = ["Servers", "Unreachable", "default_enroll_addresses", "parse_addresses"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Unreachable(Unavailable):
    """One address did not answer; message is the full one-line error for that address alone."""

    def __init__(self, address: str, detail: str, message: str) -> None:
        super().__init__(message)
        self.address = address
        self.detail = detail  # why, in a few words (the one-line summary over all addresses names it)


def parse_addresses(values: Iterable[str], *, what: str) -> tuple[str, ...]:
    """Addresses from repeated and/or comma-separated HOST:PORT values, in the order given.

    Args:
        values: each a HOST:PORT or several joined by commas (a flag given several times,
            or an environment variable).
        what: the flag or variable they came from, for error messages.

    Raises:
        InvalidArgument: an empty entry, an entry that is not HOST:PORT, or one given twice.
    """
    addresses: list[str] = []
    for value in values:
        for part in value.split(","):
            address = part.strip()
            if not address:
                raise InvalidArgument(
                    f"{what} {value!r} has an empty address: separate addresses with one comma"
                )
            host, port = parse_hostport(address, what=what)
            address = join_hostport(host, port)
            if address in addresses:
                raise InvalidArgument(f"{what} lists {address} twice")
            addresses.append(address)
    if not addresses:
        raise InvalidArgument(f"{what} needs at least one HOST:PORT")
    return tuple(addresses)


def default_enroll_addresses(servers: Sequence[str]) -> tuple[str, ...]:
    """Each server's enrollment address: its port + 1 (docs/adr/0001-enrollment-listener.md)."""
    result = []
    for server in servers:
        host, port = parse_hostport(server, what="--server")
        if port == 65535:
            raise InvalidArgument(f"--server {server} has no port + 1 for enrollment: pass --enroll-server")
        result.append(join_hostport(host, port + 1))
    return tuple(result)


class Servers:
    """The addresses of one deployment's replicas and which one to try first. Thread-safe.

    Shared by every client a process opens (a long-running agent opens many), so
    that once an address stops answering, later calls and reconnecting streams go
    straight to the one that does.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise InvalidArgument("no server address: enroll with --server HOST:PORT")
        self.addresses = tuple(addresses)
        self._first = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The address the next call or stream goes to first."""
        with self._lock:
            return self.addresses[self._first]

    def order(self) -> list[str]:
        """Every address once, starting with the current one."""
        with self._lock:
            first = self._first
        return [*self.addresses[first:], *self.addresses[:first]]

    def prefer(self, address: str) -> None:
        """address answered: start there from now on."""
        with self._lock:
            self._first = self.addresses.index(address)

    def move_past(self, address: str) -> str:
        """A stream on address broke: the next attempt goes to the address after it. Returns that one.

        Does nothing if another caller already moved on from address.
        """
        with self._lock:
            index = self.addresses.index(address)
            if index == self._first:
                self._first = (index + 1) % len(self.addresses)
            return self.addresses[self._first]

    def first_available(self, attempt: Callable[[str], T], *, what: str, hint: str) -> T:
        """Runs attempt(address) on each address in order until one does not raise Unavailable.

        Args:
            attempt: the call (or whole exchange) on one address; raises Unavailable
                (best an Unreachable) when that address does not answer.
            what: what is being reached, for the error ("kms-server").
            hint: what the operator should check, ending the error line.

        Raises:
            Unavailable: every address failed; one line naming each with its reason.
            and whatever else attempt raises, at once.
        """
        failures: list[tuple[str, Unavailable]] = []
        for address in self.order():
            try:
                result = attempt(address)
            except Unavailable as exc:
                # Debug only: a command that fails prints one line, the one below.
                logger.debug("%s at %s is unavailable: %s", what, address, exc.message)
                failures.append((address, exc))
                continue
            self.prefer(address)
            return result
        if len(failures) == 1:
            raise failures[0][1]
        tried = ", ".join(
            f"{address} ({exc.detail if isinstance(exc, Unreachable) else exc.message})"
            for address, exc in failures
        )
        raise Unavailable(f"cannot reach {what} at any of {tried}: {hint}")
