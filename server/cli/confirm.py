"""Confirmation before kms-server's irreversible commands: what will happen, concretely, then y/N.

Which commands ask: ``key destroy``, ``revoke agent|cert|key`` (not a hold, which
``release`` undoes), ``token create --replace`` and ``restore`` into a non-empty data
dir. Each says what the server knows of the target (read over the admin socket with
the existing listing calls), then asks with No as the default; ``--yes`` skips it,
and without a terminal the command is refused before anything is read or changed
(kms/prompts.py). A summary of None means the server will refuse the request anyway
(no such key version): the command goes on without a question, and prints that one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from kms.cli import ArgumentParser
from kms.errors import NotFound
from kms.prompts import NotInteractive, confirm, is_interactive
from kms.v1 import admin_pb2, monitor_pb2, types_pb2
from server.cli.admin_client import AdminClient
from server.cli.context import iso

__all__ = [
    "add_yes",
    "agent_summary",
    "cert_summary",
    "destroy_summary",
    "ask",
    "key_revoke_summary",
    "refuse_unconfirmable",
    "replace_summary",
]


def add_yes(parser: ArgumentParser) -> None:
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="do it without asking (required without a terminal: scripts, pipes)",
    )


def refuse_unconfirmable(args: argparse.Namespace, command: str) -> None:
    """Without --yes, and no terminal to ask on: refused here, before the server is asked anything."""
    if not args.yes and not is_interactive():
        raise NotInteractive(
            f"kms-server {command} cannot be undone, and without a terminal (stdin and stdout) to"
            " confirm it on it is not done: pass --yes to do it"
        )


def ask(args: argparse.Namespace, command: str, summary: Callable[[], str | None]) -> None:
    """Shows what will happen and asks, No by default (nothing with --yes, or a summary of None)."""
    refuse_unconfirmable(args, command)
    if args.yes:
        return
    text = summary()
    if text is not None:
        confirm(text, yes=False, prog=f"kms-server {command}")


def _agent(admin: AdminClient, name: str) -> types_pb2.AgentInfo | None:
    return next((a for a in admin.list_agents().agents if a.name == name), None)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _standing(admin: AdminClient, *, name: str = "", serial: str = "") -> monitor_pb2.Standing | None:
    """What the server knows of the agent now (None: it knows no such agent or serial, and will say so)."""
    try:
        return admin.standing(name=name, serial=serial)
    except NotFound:
        return None


def agent_summary(admin: AdminClient, name: str) -> str | None:
    s = _standing(admin, name=name)
    if s is None:
        return None  # the server answers "no agent named ..."
    return (
        f"agent {name} (groups {','.join(s.groups) or '-'}): {_count(s.valid_certificates, 'valid certificate')},"
        f" {_count(s.open_streams, 'open stream')} will be closed, re-enrollment barred (a new token needs"
        f" --allow-reenroll). Newest certificate: {s.newest_serial}, {s.newest_status}, until"
        f" {iso(s.newest_not_after)}."
    )


def cert_summary(admin: AdminClient, serial: str) -> str | None:
    s = _standing(admin, serial=serial)
    if s is None:
        return None  # the server answers "no certificate with serial ..."
    others = s.valid_certificates - (1 if s.serial_valid else 0)
    state = "valid" if s.serial_valid else "not valid now"
    access = (
        f"agent {s.agent} keeps {_count(others, 'other valid certificate')}"
        if others
        else f"agent {s.agent} loses access until it enrolls again"
    )
    return (
        f"certificate {serial} of agent {s.agent} ({state}) will be revoked for good:"
        f" {_count(s.serial_open_streams, 'open stream')} on it will be closed, and {access}."
    )


def _version(admin: AdminClient, name: str, version: int) -> tuple[admin_pb2.KeyInfo, str] | None:
    key = admin.get_key(name)
    state = next((v.state for v in key.versions if v.version == version), None)
    return None if state is None else (key, state)


def destroy_summary(admin: AdminClient, name: str, version: int) -> str | None:
    found = _version(admin, name, version)
    if found is None:
        return None
    key, state = found
    others = ", ".join(f"v{v.version} {v.state}" for v in key.versions if v.version != version) or "none"
    return (
        f"key {name} version {version} ({state}) will be erased for good: whatever it encrypted can never"
        f" be decrypted again. Other versions: {others}; grants: {', '.join(key.grants) or '-'}."
    )


def key_revoke_summary(admin: AdminClient, name: str, version: int) -> str | None:
    found = _version(admin, name, version)
    if found is None:
        return None
    key, state = found
    current = (
        f" It is the current version: the key rotates to version {key.current_version + 1}."
        if version == key.current_version
        else ""
    )
    return (
        f"key {name} version {version} ({state}) will be marked compromised for good: it is no longer"
        f" released, and agents watching are told (grants: {', '.join(key.grants) or '-'}).{current}"
    )


def replace_summary(admin: AdminClient, name: str) -> str:
    agent = _agent(admin, name)
    if agent is None or agent.status != "valid":
        return (
            f"agent {name} holds no valid certificate now; if it has one when this token is used,"
            " enrolling with the token revokes it (superseded)."
        )
    return (
        f"agent {name} holds a valid certificate ({agent.serial}, until {iso(agent.not_after)}): enrolling"
        " with this token revokes it (superseded), and the machine that holds it loses access."
    )
