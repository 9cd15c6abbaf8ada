"""The records the store returns, its errors, and what an audited write carries.

Times are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kms.audit import AuditRecord
from kms.errors import FailedPrecondition, StoreDown

__all__ = [
    "AUDIT_MARKER",
    "AgentRecord",
    "Audit",
    "AuditEntry",
    "AuditSink",
    "CertificateRecord",
    "Enrollment",
    "Grant",
    "JoinTokenRecord",
    "KeyRecord",
    "KeyVersionRecord",
    "RevocationEvent",
    "ScheduleChange",
    "SealFn",
    "SealedVersion",
    "StoreError",
    "WriteOutcomeUnknown",
    "audit_entries",
]


class StoreError(FailedPrecondition):
    """The store cannot be opened or used (corrupt, too new, unreadable)."""


class WriteOutcomeUnknown(StoreDown):
    """The store went away while a write was committing: it may or may not have happened."""


@dataclass(frozen=True)
class JoinTokenRecord:
    token_id: str
    secret_hash: bytes
    name: str
    groups: tuple[str, ...]
    created_at: int
    expires_at: int
    used_at: int | None = None
    # The certificate the token was spent on (an enrollment retried with the same key gets it again).
    used_by_serial: str | None = None


@dataclass(frozen=True)
class CertificateRecord:
    serial: str  # lowercase hex, no leading zeros
    agent_name: str
    not_before: int
    not_after: int
    der: bytes
    issued_at: int
    token_id: str | None
    revoked_at: int | None = None
    revocation_reason: str | None = None
    ca_generation: int = 1  # the CA generation that signed it


@dataclass(frozen=True)
class RevocationEvent:
    seq: int
    # "cert", "agent", "key" (a compromised version), "rotate" (a key's new current version),
    # "disable" or "enable" (the key's release stopped or resumed; key_version: its current one),
    # "expire" (the key's expiry came: every version deactivated; key_version: its current one)
    kind: str
    serial: str | None  # kind cert: the serial; kind agent: the serials revoked with it, comma-separated
    agent_name: str | None
    key_name: str | None
    key_version: int | None
    reason: str
    at: int
    # Key events only (key_name set): who held a grant on the key when the event
    # committed ("agent:NAME", "group:NAME", sorted). Watch sends a key event only
    # to those, so an agent never learns the names of keys it is not granted.
    grantees: tuple[str, ...] | None = None

    def serials(self) -> tuple[str, ...]:
        return tuple(s for s in (self.serial or "").split(",") if s)


@dataclass(frozen=True)
class AgentRecord:
    name: str
    # The groups of ``latest``: groups belong to a certificate, not to a name.
    groups: tuple[str, ...]
    created_at: int
    # The newest certificate issued to the agent (or the one asked for by serial).
    latest: CertificateRecord


@dataclass(frozen=True)
class Enrollment:
    """What one enrollment committed."""

    agent: AgentRecord
    # The name's earlier certificates a --replace token revoked (reason superseded),
    # one 'cert' event each, in the same transaction.
    superseded: tuple[RevocationEvent, ...] = ()


@dataclass(frozen=True)
class Grant:
    kind: str  # "agent" or "group"
    grantee: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.grantee}"


@dataclass(frozen=True)
class KeyVersionRecord:
    key_name: str
    version: int
    state: str  # KMIP: active, deactivated, compromised, destroyed, destroyed_compromised
    created_at: int
    state_changed_at: int
    # When it stopped being active (rotated out, or its key expired); None while active.
    deactivated_at: int | None = None
    # Key pairs: the public key, SubjectPublicKeyInfo DER (not secret); None for AES keys.
    public_key: bytes | None = field(default=None, repr=False)
    # Only returned by release_key_version; never by listings, never in a repr.
    sealed_material: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KeyRecord:
    name: str
    current_version: int
    created_at: int
    versions: tuple[KeyVersionRecord, ...]
    grants: tuple[Grant, ...]
    # Set while the key is disabled (kms-server key disable): no version is released.
    # A rotation scheduler must skip a key while disabled_at is set (rotation pauses).
    disabled_at: int | None = None
    disabled_reason: str | None = None
    # "aes-256", or a key pair the server made: "rsa-2048", "rsa-3072", "rsa-4096", "ec-p256".
    key_type: str = "aes-256"
    # Unix seconds; None: never. From then on every version is deactivated (decrypt only).
    expires_at: int | None = None
    # Scheduled rotation: the period in seconds, and when the next rotation is due (None: none).
    rotate_every: int | None = None
    rotation_due_at: int | None = None
    # Bit set of the expiry notices given (warnings, the expire event): each is given once.
    expiry_notices: int = 0


@dataclass(frozen=True)
class ScheduleChange:
    """What ``key set`` changes of a key's schedule; set_expiry / set_rotation say which apply.

    expires_at None (with set_expiry): never expires; rotate_every None (with
    set_rotation): no scheduled rotation. Both checked by server/keys/schedule.py.
    """

    set_expiry: bool = False
    expires_at: int | None = None
    set_rotation: bool = False
    rotate_every: int | None = None


@dataclass(frozen=True)
class SealedVersion:
    """A new version's material sealed for its slot, and a key pair's public key (SPKI DER)."""

    sealed_material: bytes = field(repr=False)
    public_key: bytes | None = field(default=None, repr=False)


# Seals material for a version number the store has just allocated: the sealed material
# (AES keys), or a SealedVersion (key pairs). Material that is slow to make (a key pair)
# is made before the transaction: this only seals it.
SealFn = Callable[[int], bytes | SealedVersion]


@dataclass(frozen=True)
class AuditEntry:
    """What happened, for the audit trail (never a secret: tokens and keys by id only)."""

    at: int
    actor: str  # "admin", "agent:<name>/<serial>", "token:<id>"
    action: str  # e.g. "enroll", "key.release", "revoke.agent"
    object: str
    outcome: str = "ok"


# An entry, or one made from the operation's result (when the object is known only then);
# several when one operation is several actions (a compromised current version is
# revoked and replaced by a new one).
Audit = AuditEntry | Sequence[AuditEntry] | Callable[[Any], AuditEntry | Sequence[AuditEntry]] | None


def audit_entries(audit: Audit, result: Any) -> list[AuditEntry]:
    """The entries a write appends, given its result (None: nothing happened, nothing to record)."""
    if audit is None or result is None:
        return []
    made = audit(result) if callable(audit) else audit
    return [made] if isinstance(made, AuditEntry) else list(made)


# The meta row that says from which seq the audit chain is keyed: "pending" until
# a server holding the master key first opens the store (server/store/sql/audit.py).
AUDIT_MARKER = "audit_keyed_from"


class AuditSink(Protocol):
    """Where committed audit records are copied outside the database (server/audit/devices.py).

    Called once per commit with its records in order, never concurrently;
    it must not raise (the records are committed already).
    """

    def write(self, records: Sequence[AuditRecord]) -> None: ...
