"""Watch-feed events (revocations, key rotations, disables, enables, expiries) as people and scripts read
them (both CLIs print them the same way)."""

from __future__ import annotations

from kms.revocation import HOLD
from kms.times import iso
from kms.v1 import revocation_pb2

__all__ = ["NOT_REVOCATIONS", "describe", "event_fields", "state_text", "subject"]

# Kinds of event that share the log and the feed but revoke nothing: news for the agents
# granted a key (its new current version; its release stopped or resumed; it expired), and
# for every agent, the CA trust bundle changed ("bundle": fetch it with GetCABundle).
NOT_REVOCATIONS = frozenset({"rotate", "disable", "enable", "expire", "bundle"})


def event_fields(event: revocation_pb2.RevocationEvent) -> dict[str, str | int]:
    """The event as flat fields: JSON lines, and KMS_EVENT_* variables for --exec."""
    fields: dict[str, str | int] = {
        "seq": event.seq,
        "kind": event.kind,
        "reason": event.reason,
        "at": iso(event.at),
    }
    if event.serial:
        fields["serial"] = event.serial
    if event.agent_name:
        fields["agent"] = event.agent_name
    if event.key_name:
        fields["key"] = event.key_name
        fields["version"] = event.key_version
    if event.state:  # listings only: "in force" or "released"
        fields["state"] = event.state
    if event.released_by:
        fields["released_by"] = event.released_by
    return fields


def subject(event: revocation_pb2.RevocationEvent) -> str:
    """What the event is about, in words: 'agent web-1 revoked (certificates 1f)'."""
    if event.kind == "key":
        return f"key {event.key_name} version {event.key_version} compromised"
    if event.kind == "rotate":
        return f"key {event.key_name} rotated to version {event.key_version}"
    if event.kind == "disable":
        return f"key {event.key_name} disabled (no version is released until it is enabled)"
    if event.kind == "enable":
        return f"key {event.key_name} enabled (current version {event.key_version})"
    if event.kind == "expire":
        return (
            f"key {event.key_name} expired (every version decrypts only; current version {event.key_version})"
        )
    if event.kind == "bundle":
        return f"CA trust bundle changed (new CA certificate {event.serial or '?'})"
    if event.kind == "release":
        return f"hold of {event.agent_name or '?'} released (certificates {event.serial or 'none'})"
    verb = "held" if event.reason == HOLD else "revoked"
    if event.kind == "agent":
        return f"agent {event.agent_name} {verb} (certificates {event.serial or 'none'})"
    return f"certificate {event.serial} of {event.agent_name or '?'} {verb}"


def state_text(event: revocation_pb2.RevocationEvent) -> str:
    """A listed event's state: 'in force', 'released by #12', or '' (not a listing)."""
    return event.state + (f" by #{event.released_by}" if event.released_by and event.state else "")


def describe(event: revocation_pb2.RevocationEvent) -> str:
    if event.kind in ("enable", "bundle"):  # no reason to give
        return f"#{event.seq} {iso(event.at)} {subject(event)}"
    line = f"#{event.seq} {iso(event.at)} {subject(event)}: {event.reason}"
    if event.state:
        line += f" [{state_text(event)}]"
    return line
