"""Domain records to protobuf messages: one function per message the servicers send."""

from __future__ import annotations

import functools

from kms.v1 import admin_pb2, revocation_pb2, types_pb2
from server.clock import seconds
from server.endpoints.authn import Caller
from server.enrollment.agents import AgentView
from server.keys import KeyRecord
from server.revocation.service import Revocation, RevocationEvent
from server.revocation.states import Entry
from server.revocation.watch import Heartbeat, Resume, WatchItem

__all__ = [
    "agent_info",
    "caller_info",
    "entry_message",
    "event_message",
    "key_info",
    "revoke_response",
    "watch_message",
]


def caller_info(caller: Caller) -> types_pb2.AgentInfo:
    return types_pb2.AgentInfo(
        name=caller.name,
        groups=list(caller.groups),
        spiffe_id=caller.spiffe_id,
        serial=caller.serial,
        not_before=seconds(caller.not_before),
        not_after=seconds(caller.not_after),
        status="valid",
    )


def agent_info(view: AgentView) -> types_pb2.AgentInfo:
    return types_pb2.AgentInfo(
        name=view.record.name,
        groups=list(view.record.groups),
        spiffe_id=view.spiffe_id,
        serial=view.record.latest.serial,
        not_before=view.record.latest.not_before,
        not_after=view.record.latest.not_after,
        status=view.status,
    )


def key_info(key: KeyRecord, warnings: tuple[str, ...] = ()) -> admin_pb2.KeyInfo:
    return admin_pb2.KeyInfo(
        warnings=list(warnings),
        name=key.name,
        current_version=key.current_version,
        created_at=key.created_at,
        versions=[
            admin_pb2.KeyVersionInfo(
                version=v.version,
                state=v.state,
                created_at=v.created_at,
                state_changed_at=v.state_changed_at,
                activated_at=v.created_at,  # a version is the current one from its creation
                deactivated_at=v.deactivated_at or 0,
            )
            for v in key.versions
        ],
        grants=[str(g) for g in key.grants],
        disabled=key.disabled_at is not None,
        disabled_at=key.disabled_at or 0,
        disabled_reason=key.disabled_reason or "",
        key_type=key.key_type,
        expires_at=key.expires_at or 0,
        rotate_every=key.rotate_every or 0,
        rotation_due_at=key.rotation_due_at or 0,
    )


def event_message(event: RevocationEvent) -> revocation_pb2.RevocationEvent:
    return revocation_pb2.RevocationEvent(
        seq=event.seq,
        kind=event.kind,
        serial=event.serial or "",
        agent_name=event.agent_name or "",
        key_name=event.key_name or "",
        key_version=event.key_version or 0,
        reason=event.reason,
        at=event.at,
    )


def entry_message(entry: Entry) -> revocation_pb2.RevocationEvent:
    """A revocation as ListRevocations lists it: with its state."""
    message = event_message(entry.event)
    message.state = entry.state
    message.released_by = entry.released_by or 0
    return message


@functools.lru_cache(maxsize=64)
def _event_response(event: RevocationEvent) -> revocation_pb2.WatchResponse:
    """Built once per event and shared by every stream that sends it (never mutated)."""
    return revocation_pb2.WatchResponse(event=event_message(event))


@functools.lru_cache(maxsize=4)
def _heartbeat_response(item: Heartbeat) -> revocation_pb2.WatchResponse:
    """Built once per tick and shared by every stream that sends it (never mutated)."""
    return revocation_pb2.WatchResponse(heartbeat=revocation_pb2.Heartbeat(current_seq=item.current_seq))


def watch_message(item: WatchItem) -> revocation_pb2.WatchResponse:
    if isinstance(item, Heartbeat):
        return _heartbeat_response(item)
    if isinstance(item, Resume):
        return revocation_pb2.WatchResponse(
            resume=revocation_pb2.Resume(after_seq=item.after_seq, reason="fell behind")
        )
    return _event_response(item)


def revoke_response(revocation: Revocation) -> admin_pb2.RevokeResponse:
    return admin_pb2.RevokeResponse(
        event=event_message(revocation.event),
        already_revoked=revocation.already_revoked,
        cascaded=[event_message(e) for e in revocation.cascaded],
    )
