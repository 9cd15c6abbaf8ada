"""The happenings `kms-server top` shows: the last few hundred, in words, and who to wake for each.

Two sources, both told as things commit on this server: the revocation feed
(revocations, holds, releases, rotations, compromised keys, disables and
expiries, this replica's and the others' as the feed publishes them) and the
enrollment service (enrollments and renewals, this replica's only). Each
live view (server/ops/observe.py) listens with an asyncio.Event, set on
every new happening, so a revocation reaches the screen at once rather than
at the next tick.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from itertools import islice

from kms.revocation import HOLD
from kms.times import iso
from server.store import CertificateRecord, RevocationEvent

__all__ = ["Happening", "Journal"]

# The key events: after one, a view reads the keys again (their state changed).
_KEY_KINDS = frozenset({"key", "rotate", "disable", "enable", "expire"})


@dataclass(frozen=True)
class Happening:
    id: int
    at: int  # Unix seconds
    kind: str
    subject: str
    detail: str


def _described(event: RevocationEvent) -> tuple[str, str, str]:
    """(kind, subject, detail) of a feed event, as the view shows it."""
    key = f"key {event.key_name}"
    if event.kind == "cert":
        kind = "hold" if event.reason == HOLD else "revoke"
        return kind, f"cert {event.serial}", f"of agent {event.agent_name or '?'}: {event.reason}"
    if event.kind == "agent":
        kind = "hold" if event.reason == HOLD else "revoke"
        return kind, f"agent {event.agent_name}", f"{event.reason} (certificates {event.serial or 'none'})"
    if event.kind == "release":
        return "release", f"agent {event.agent_name or '?'}", f"certificates {event.serial or 'none'}"
    if event.kind == "key":
        return "compromise", key, f"version {event.key_version}: {event.reason}"
    if event.kind == "rotate":
        return "rotate", key, f"to version {event.key_version}"
    if event.kind == "disable":
        return "disable", key, event.reason
    if event.kind == "expire":
        return "expire", key, "every version decrypts only"
    if event.kind == "bundle":
        return "bundle", "CA trust bundle", f"CA certificate {event.serial} {event.reason or 'prepared'}"
    return event.kind, key, f"current version {event.key_version}"


class Journal:
    """The newest happenings (at most ``keep``), numbered in order, and the views to wake."""

    def __init__(self, keep: int = 500) -> None:
        self._happenings: deque[Happening] = deque(maxlen=keep)
        self._next = 1
        self._listeners: set[asyncio.Event] = set()
        # How many key events went by: a view compares it to re-read the keys only then.
        self.key_changes = 0

    def listen(self) -> asyncio.Event:
        """An event set on every new happening (clear it after each wake); unlisten when done."""
        wake = asyncio.Event()
        self._listeners.add(wake)
        return wake

    def unlisten(self, wake: asyncio.Event) -> None:
        self._listeners.discard(wake)

    def published(self, event: RevocationEvent) -> None:
        """The feed sent an event out (this replica's, or another's)."""
        if event.kind in _KEY_KINDS:
            self.key_changes += 1
        self._add(event.at, *_described(event))

    def issued(self, cert: CertificateRecord) -> None:
        """A certificate was issued: an enrollment (it came with a join token) or a renewal."""
        kind = "enroll" if cert.token_id else "renew"
        self._add(
            cert.issued_at,
            kind,
            f"agent {cert.agent_name}",
            f"certificate {cert.serial} until {iso(cert.not_after)}",
        )

    def recent(self, limit: int) -> list[Happening]:
        """The newest ``limit`` happenings, newest first."""
        return list(islice(reversed(self._happenings), limit))

    def _add(self, at: int, kind: str, subject: str, detail: str) -> None:
        self._happenings.append(Happening(self._next, at, kind, subject, detail))
        self._next += 1
        for wake in self._listeners:
            wake.set()
