"""Is this agent's own certificate still good? Asked before the agent signs anything with its key.

A signature made with a revoked or expired certificate fails every careful
verifier, and a careless one would accept it: either way the signer must
refuse, not exit 0. The dates are checked here (an expired certificate cannot
even complete a TLS handshake). Revocation is asked of the server, whose
answer comes from the same state that authenticates every call; when no
server answers, the local watch state (what `kms-agent watch` or `run` last
heard) decides, and the caller is told that it was only that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.context import client_for, refuse_expired
from agent.state import AgentIdentity, StateDir
from kms.errors import Held, Revoked, Unauthenticated, Unavailable
from kms.revocation import HOLD
from kms.times import iso_datetime

__all__ = ["Standing", "check_standing"]


@dataclass(frozen=True)
class Standing:
    serial: str
    # None: the server answered. Otherwise why only local state was used.
    offline_note: str | None = None


def check_standing(state: StateDir, identity: AgentIdentity, timeout: float, now: datetime) -> Standing:
    """Returns how the certificate was found good; raises if it is not.

    Raises:
        Unauthenticated: expired or not yet valid (by its own dates), or unknown to the server.
        Revoked: revoked, as the server says or, with no server answering, as the watch state says.
    """
    cert = identity.cert
    serial = format(cert.serial_number, "x")
    refuse_expired(identity, now)
    if now < cert.not_valid_before_utc:
        raise Unauthenticated(
            f"this agent's certificate {serial} is valid only from {iso_datetime(cert.not_valid_before_utc)}"
            " (checked locally, by its dates): check the clock"
        )
    try:
        with client_for(identity, timeout) as client:
            status = client.check_certificate(serial)
    except Held as exc:  # suspended, not revoked: nothing to remember, it may be released
        raise Held(f"{exc.message} (the server says so)") from None
    except Revoked as exc:  # the server refused the call itself: this certificate is revoked
        state.save_revoked(serial, exc.message)
        raise Revoked(f"{exc.message} (the server says so)") from None
    except Unauthenticated as exc:
        raise Unauthenticated(f"{exc.message} (the server says so)") from None
    except Unavailable as exc:
        revoked = state.revoked(serial)
        if revoked is not None:
            raise Revoked(
                f"this agent's certificate {serial} was revoked ({revoked}), as the local watch state says"
                " (no server answered): enroll again"
            ) from None
        return Standing(
            serial,
            f"no server answered ({exc.message}); the certificate was checked against the local watch state"
            f" only, which has events up to #{state.last_seq()}",
        )
    if status.status == "revoked" and status.reason == HOLD:
        raise Held(f"this agent's certificate {serial} is on hold (certificateHold), as the server says")
    if status.status == "revoked":
        state.save_revoked(serial, status.reason)
        raise Revoked(
            f"this agent's certificate {serial} was revoked ({status.reason}), as the server says: enroll again"
        )
    if status.status != "good":
        raise Unauthenticated(
            f"the server does not know this agent's certificate {serial} ({status.status}): enroll again"
        )
    return Standing(serial)
