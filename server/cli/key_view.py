"""How the key commands print a key: the JSON every --json gives (show and list: the same
fields), the `key show` page, and the marks and texts for expiry and rotation."""

from __future__ import annotations

from datetime import timedelta

from kms.cli import print_views
from kms.durations import format_duration
from kms.output import Record, State, Table, Tone, When
from kms.times import iso
from kms.v1 import admin_pb2

__all__ = [
    "SOON",
    "expiry_mark",
    "expiry_tone",
    "expiry_text",
    "key_json",
    "period_text",
    "print_show",
    "rotation_text",
    "schedule_json",
    "state_json",
    "version_json",
]

# Keys expiring within this long are marked in `key list` and `key show` (and logged by the server).
SOON = 7 * 86_400


def expiry_mark(expires_at: int, now: int) -> str:
    """'expired', 'expires soon' (within 7 days), or '' (no expiry, or later)."""
    if not expires_at:
        return ""
    if expires_at <= now:
        return "expired"
    return "expires soon" if expires_at - now <= SOON else ""


_EXPIRY_TONES: dict[str, Tone] = {"expired": "bad", "expires soon": "warn"}


def expiry_tone(expires_at: int, now: int) -> Tone | None:
    """How a terminal colors an expiry: red once past, yellow within 7 days."""
    return _EXPIRY_TONES.get(expiry_mark(expires_at, now))


def period_text(seconds: int) -> str | None:
    """A rotation period as typed (30d), or None for none."""
    return format_duration(timedelta(seconds=seconds)) if seconds else None


def _iso_or_none(ts: int) -> str | None:
    return iso(ts) if ts else None


def schedule_json(key: admin_pb2.KeyInfo, now: int) -> dict[str, object]:
    """The schedule fields of `key show --json` and `key list --json`."""
    return {
        "expires_at": _iso_or_none(key.expires_at),
        "expired": bool(key.expires_at) and key.expires_at <= now,
        "expires_soon": expiry_mark(key.expires_at, now) == "expires soon",
        "rotate_every": period_text(key.rotate_every),
        "rotate_every_seconds": key.rotate_every or None,
        "rotation_due_at": _iso_or_none(key.rotation_due_at),
    }


def version_json(v: admin_pb2.KeyVersionInfo) -> dict[str, object]:
    return {
        "version": v.version,
        "state": v.state,
        "created_at": iso(v.created_at),
        "activated_at": _iso_or_none(v.activated_at),
        "deactivated_at": _iso_or_none(v.deactivated_at),
    }


def expiry_text(key: admin_pb2.KeyInfo, now: int) -> str:
    if not key.expires_at:
        return "never"
    mark = expiry_mark(key.expires_at, now)
    return f"{iso(key.expires_at)} ({mark.upper()})" if mark else iso(key.expires_at)


def rotation_text(key: admin_pb2.KeyInfo) -> str:
    if not key.rotate_every:
        return "by hand only"
    return f"every {period_text(key.rotate_every)}, next due {iso(key.rotation_due_at)}"


def state_json(key: admin_pb2.KeyInfo) -> dict[str, object]:
    if not key.disabled:
        return {"state": "enabled"}
    return {"state": "disabled", "disabled_at": iso(key.disabled_at), "disabled_reason": key.disabled_reason}


def key_json(key: admin_pb2.KeyInfo, now: int) -> dict[str, object]:
    """A key as every --json of the key commands prints it (show and list: the same fields)."""
    return {
        "name": key.name,
        "type": key.key_type or "aes-256",
        "current_version": key.current_version,
        "created_at": iso(key.created_at),
        "versions": [version_json(v) for v in key.versions],
        "grants": list(key.grants),
        **state_json(key),
        **schedule_json(key, now),
    }


def print_show(key: admin_pb2.KeyInfo, now: int) -> None:
    state = f"disabled since {iso(key.disabled_at)} ({key.disabled_reason})" if key.disabled else "enabled"
    grants = ", ".join(key.grants) or "-"
    expires: str | When = (
        When(key.expires_at, tone=expiry_tone(key.expires_at, now)) if key.expires_at else "never"
    )
    page = Record(
        f"key {key.name}",
        [
            ("type", key.key_type or "aes-256"),
            ("state", State(f"disabled ({key.disabled_reason})" if key.disabled else "enabled")),
            *([("disabled", When(key.disabled_at))] if key.disabled else []),
            ("expires", expires),
            ("rotation", f"every {period_text(key.rotate_every)}" if key.rotate_every else "by hand only"),
            *([("next rotation", When(key.rotation_due_at))] if key.rotate_every else []),
            ("grants", grants),
        ],
        [
            f"key {key.name}",
            f"  type:     {key.key_type or 'aes-256'}",
            f"  state:    {state}",
            f"  expires:  {expiry_text(key, now)}",
            f"  rotation: {rotation_text(key)}",
            f"  grants:   {grants}",
        ],
    )
    versions = Table(
        ["VERSION", "STATE", "CREATED", "ACTIVATED", "DEACTIVATED"],
        [
            [str(v.version), State(v.state), When(v.created_at), When(v.activated_at), When(v.deactivated_at)]
            for v in key.versions
        ],
    )
    print_views(page, versions)
