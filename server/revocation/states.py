"""Which revocations are in force: a hold stays in force until a release lifts it.

Pure: the event log in, each revocation's state out (for kms-server revocations list).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kms.revocation import HOLD
from server.store.records import RevocationEvent

__all__ = ["IN_FORCE", "RELEASED", "REVOCATION_KINDS", "Entry", "entries"]

IN_FORCE = "in force"
RELEASED = "released"
# The kinds of event that revoke something (the log also carries rotations and releases).
REVOCATION_KINDS = ("cert", "agent", "key")


@dataclass(frozen=True)
class Entry:
    event: RevocationEvent
    state: str  # IN_FORCE or RELEASED
    released_by: int | None = None  # the seq of the release that lifted it (a hold's last one)


def entries(log: Iterable[RevocationEvent], *, active: bool = False) -> list[Entry]:
    """Each revocation of log (in seq order) and its state; active: only those in force.

    A final revocation is in force for good. A hold is released once releases after it
    name every certificate it held (a hold that held none stays as it was: in force).
    """
    events = sorted(log, key=lambda e: e.seq)
    out: list[Entry] = []
    for i, event in enumerate(events):
        if event.kind not in REVOCATION_KINDS:
            continue
        released_by = _released_by(event, events[i + 1 :]) if event.reason == HOLD else None
        if released_by is None:
            out.append(Entry(event, IN_FORCE))
        elif not active:
            out.append(Entry(event, RELEASED, released_by))
    return out


def _released_by(hold: RevocationEvent, later: list[RevocationEvent]) -> int | None:
    """The release after which none of the hold's certificates is held by it any more (None: not yet).

    A certificate the hold held that is revoked for good before any release is no longer
    the hold's: the rest, once released, make the hold released; none left, it never was.
    """
    left = set(hold.serials())
    for event in later:
        if not left:
            return None
        if event.kind == "release" and left & set(event.serials()):
            left -= set(event.serials())
            if not left:
                return event.seq
        elif event.kind in ("cert", "agent"):
            left -= set(event.serials())
    return None
