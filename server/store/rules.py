"""What both store backends decide the same way: refusals and their words, and state changes.

The SQL differs per backend; the answers must not, so they live here once.
"""

from __future__ import annotations

from kms.errors import (
    AlreadyExists,
    FailedPrecondition,
    Held,
    KeyDisabled,
    KeyExpired,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Revoked,
    StoreDown,
    Unavailable,
)
from kms.keypairs import require_aes, require_key_pair
from kms.revocation import HOLD
from kms.times import iso
from server.store.records import Grant, KeyVersionRecord, WriteOutcomeUnknown

__all__ = [
    "ca_retired",
    "caller_revoked",
    "check_key_kind",
    "check_releasable",
    "compromised_state",
    "destroyed_state",
    "expiry_final",
    "key_disabled",
    "key_expired",
    "key_exists",
    "no_agent",
    "no_certificate",
    "no_grant",
    "no_key",
    "no_version",
    "not_erased",
    "not_granted",
    "name_in_use",
    "name_revoked",
    "not_held",
    "reenroll_refused",
    "renewal_refused",
    "revocable",
    "renewed_too_soon",
    "still_current",
    "store_down",
]


def store_down(cause: str, *, committing: bool = False) -> StoreDown:
    """The database is out of reach (cause: what failed); committing: it went while a change was
    committing, so the change may or may not have been made. Every such error is made here."""
    if committing:
        return WriteOutcomeUnknown(
            f"the database is not reachable from this kms-server ({cause}) while a change was committing: it may or may not "
            "have been made; check whether it happened before repeating it"
        )
    return StoreDown(f"the database is not reachable from this kms-server ({cause}): retry shortly")


def not_granted(name: str) -> PermissionDenied:
    # Same words whether or not the key exists: no oracle for key names.
    return PermissionDenied(
        f"this agent is not granted key {name!r} (or it does not exist): ask the administrator"
    )


def no_key(name: str) -> NotFound:
    return NotFound(f"no key named {name!r}: see kms-server key list")


def no_version(name: str, version: int) -> NotFound:
    return NotFound(f"key {name!r} has no version {version}: see kms-server key list")


def key_exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"key {name!r} already exists: use kms-server key rotate")


def not_erased(name: str, version: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"version {version} of {name!r} is destroyed, but its old bytes are still in the write-ahead log "
        "because another process has the database open: close it; the erasure completes at the next "
        "destroy or server start"
    )


def key_disabled(name: str, reason: str | None) -> KeyDisabled:
    """What a granted agent is told while the key is disabled (only after its grant is checked:
    an agent not granted the key learns nothing of its state)."""
    why = f" ({reason})" if reason else ""
    return KeyDisabled(
        f"key {name} is disabled{why}: no version of it is released until an administrator runs "
        f"kms-server key enable {name}"
    )


def key_expired(name: str, expires_at: int, *, key_pair: bool = False) -> KeyExpired:
    """What a granted agent fetching for encryption (or a key pair's private key) is told once
    the key has expired."""
    if key_pair:
        return KeyExpired(
            f"key {name} expired at {iso(expires_at)}: its private key is no longer released (it "
            "signed until then; its public key still verifies); use another key pair for new signatures"
        )
    return KeyExpired(
        f"key {name} expired at {iso(expires_at)}: it may still decrypt but no longer encrypts; "
        "use another key for new data"
    )


def decrypt_only(name: str, version: int) -> FailedPrecondition:
    """A deactivated version asked for encryption: KMIP lets it decrypt only."""
    return FailedPrecondition(
        f"version {version} of key {name!r} is deactivated: it decrypts only (kms-agent fetch-key "
        f"--purpose decrypt --version {version}); new data goes under the current version"
    )


def expiry_final(name: str, expires_at: int) -> FailedPrecondition:
    """An expired key's schedule cannot be changed (expiry is final, as KMIP's Deactivated)."""
    return FailedPrecondition(
        f"key {name} expired at {iso(expires_at)} and expiry is final: its versions still decrypt, "
        "but it gets no new expiry or rotation; create a new key for new data"
    )


def no_grant(name: str, grant: Grant) -> NotFound:
    return NotFound(f"key {name!r} has no grant {grant}")


def still_current(name: str, version: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"version {version} is the current version of {name!r}: rotate the key first, then destroy it"
    )


def no_certificate(serial: str) -> NotFound:
    return NotFound(f"no certificate with serial {serial} was issued by this CA: see kms-server agents list")


def no_agent(name: str) -> NotFound:
    return NotFound(f"no agent named {name!r}: see kms-server agents list")


def reenroll_refused(name: str) -> PermissionDenied:
    return PermissionDenied(
        f"agent {name!r} was revoked: it may enroll again only with a token created with --allow-reenroll"
    )


def name_revoked(name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"agent {name!r} was revoked: pass --allow-reenroll to let it enroll again with this token"
    )


def name_in_use(name: str, *, at_enroll: bool = False) -> FailedPrecondition:
    # Two machines must not hold one identity: a second enrollment replaces the first, or nothing.
    if at_enroll:
        return FailedPrecondition(
            f"agent {name!r} already holds a valid certificate: this token does not replace it; ask the "
            "administrator for a token made with kms-server token create --replace"
        )
    return FailedPrecondition(
        f"agent {name!r} already holds a valid certificate: pass --replace to let this token's enrollment "
        "revoke it (superseded), or revoke it first"
    )


def ca_retired(generation: int) -> Unavailable:
    return Unavailable(
        f"the certificate was signed by CA generation {generation}, which was retired meanwhile (a CA"
        " rotation): nothing was recorded (a join token stays unused); try again"
    )


def renewal_refused(name: str, serial: str) -> Revoked:
    return Revoked(f"this agent's certificate {serial} was revoked (agent {name!r}): renewal refused")


def renewed_too_soon(name: str, last: int, since: int, now: int) -> ResourceExhausted:
    """A renewal while the agent's last one (at ``last``) is newer than ``since`` (now minus the window)."""
    return ResourceExhausted(
        f"agent {name!r} was issued a renewed certificate {max(0, now - last)}s ago and renews at most once in "
        f"{now - since}s: use that certificate, or retry in {max(1, last - since)}s"
    )


def caller_revoked(serial: str, reason: str) -> Revoked:
    """What a caller whose certificate is revoked is told: on its next call, on its open streams,
    and by a key release that its revocation overtook. One text, so the advice never differs."""
    if reason == HOLD:  # suspended, not revoked for good: the same certificate works again once released
        return Held(
            f"client certificate {serial} is on hold (certificateHold): wait for the administrator to release it"
            " (kms-server release); no new enrollment is needed"
        )
    if reason == "superseded":  # another machine enrolled under this name with a --replace token
        return Revoked(
            f"client certificate {serial} was revoked (superseded): another enrollment of this agent's name"
            " replaced it"
        )
    return Revoked(
        f"client certificate {serial} was revoked ({reason}): enroll again with a token created with --allow-reenroll"
    )


def destroyed_state(state: str) -> str | None:
    """The state a version goes to when destroyed (None: it already is)."""
    if state.startswith("destroyed"):
        return None
    return "destroyed_compromised" if state == "compromised" else "destroyed"


def compromised_state(state: str) -> str | None:
    """The state a version goes to when revoked as compromised (None: it already is)."""
    if state in ("compromised", "destroyed_compromised"):
        return None
    return "destroyed_compromised" if state == "destroyed" else "compromised"


def check_key_kind(name: str, key_type: str, key_pair: bool) -> None:
    """Refuses (WrongKeyType) a release for an AES use of a key pair, or the other way round."""
    if key_pair:
        require_key_pair(name, key_type, "be fetched as a key pair")
    else:
        require_aes(name, key_type, "be released as an AES key")


def check_releasable(name: str, wanted: int, record: KeyVersionRecord | None) -> KeyVersionRecord:
    """The version itself, if it may be released to a granted agent; raises why not."""
    if record is None:
        raise NotFound(f"key {name!r} has no version {wanted}")
    if record.state == "compromised":
        raise FailedPrecondition(
            f"version {wanted} of key {name!r} is compromised: it is no longer released; "
            "use the current version for new data"
        )
    if record.sealed_material is None:
        raise FailedPrecondition(
            f"version {wanted} of key {name!r} was destroyed: its data cannot be decrypted"
        )
    return record


def not_held(subject: str, reason: str | None, *, released: bool = False) -> FailedPrecondition:
    """Why a release of subject ("certificate SERIAL" or "agent NAME") is refused.

    reason: the subject's revocation in force (None: it is not revoked at all);
    released: there was a hold, but nothing it held is held still.
    """
    if reason is not None and reason != HOLD:
        return FailedPrecondition(
            f"{subject} was revoked ({reason}), which is final: only a hold (certificateHold) can be released"
        )
    if released:
        return FailedPrecondition(
            f"{subject} is not held any more: its last hold was released, or what it held was revoked for good since"
        )
    return FailedPrecondition(
        f"{subject} is not held: only a hold (kms-server revoke ... certificateHold / --hold) can be released"
    )


def revocable(revoked_at: int | None, revoked_for: str | None, reason: str) -> bool:
    """Whether a certificate (revoked at revoked_at for revoked_for, or not) is revoked anew for reason.

    One in force is; a held one only for a final reason, which replaces the hold (RFC 5280
    §5.3.1: a hold may end in a final revocation); a final revocation stays as it is.
    """
    if revoked_at is None:
        return True
    return revoked_for == HOLD and reason != HOLD
