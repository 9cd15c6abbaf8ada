"""kms-server key commands over the admin socket: create, rotate, grant, ungrant, list, destroy,
disable, enable, and how a key is printed."""

from __future__ import annotations

import argparse
import sys
import time

from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_table
from kms.keypairs import KEY_TYPES
from kms.output import State, When
from kms.prompts import ask_text, value_or_ask
from kms.v1 import admin_pb2
from server.cli import confirm
from server.cli.context import admin as _admin
from server.cli.context import iso
from server.cli.key_schedule import add_schedule_options, add_set_and_show, schedule_request
from server.cli.key_view import expiry_mark, expiry_text, expiry_tone, key_json, period_text

__all__ = ["add_key"]


def _key_json(key: admin_pb2.KeyInfo) -> dict[str, object]:
    return key_json(key, int(time.time()))


def _state_text(key: admin_pb2.KeyInfo) -> str:
    return f"disabled ({key.disabled_reason})" if key.disabled else "enabled"


def _print_key(key: admin_pb2.KeyInfo, as_json: bool) -> None:
    for warning in key.warnings:  # on stderr: stdout stays the key's description (or JSON)
        print(f"kms-server: warning: {warning}", file=sys.stderr)
    if as_json:
        print_json(_key_json(key))
        return
    versions = ", ".join(f"v{v.version} {v.state}" for v in key.versions)
    print(
        f"{key.name}: {key.key_type or 'aes-256'}, {_state_text(key)}, current version {key.current_version}"
        f" ({versions}); grants: {', '.join(key.grants) or '-'}{_schedule_text(key)}"
    )


def _schedule_text(key: admin_pb2.KeyInfo) -> str:
    """'' for a key without a schedule (as before schedules existed)."""
    parts = []
    if key.expires_at:
        parts.append(f"expires {expiry_text(key, int(time.time()))}")
    if key.rotate_every:
        parts.append(f"rotates every {period_text(key.rotate_every)}, next {iso(key.rotation_due_at)}")
    return "; " + "; ".join(parts) if parts else ""


def _ask_for_key(args: argparse.Namespace) -> None:
    """key create without a name: on a terminal, asks for the name and the grants."""
    if args.name:
        return
    args.name = value_or_ask(None, "key name", flag="name", prog="kms-server key create")
    if not args.grant:
        text = "grants (agent:NAME or group:NAME, comma-separated, empty for none)"
        args.grant = [
            g.strip() for g in ask_text(text, what="--grant", optional=True).split(",") if g.strip()
        ]


def cmd_key_create(args: argparse.Namespace) -> int:
    _ask_for_key(args)
    expires_at, rotate_every = schedule_request(args, int(time.time()))
    schedule = {"expires_at": expires_at or 0, "rotate_every": rotate_every or 0}
    with _admin(args) as admin:
        key = admin.create_key(args.name, args.grant or [], args.allow_unknown_grantee, args.type, **schedule)
    _print_key(key, args.json)
    return 0


def cmd_key_rotate(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print_key(admin.rotate_key(args.name), args.json)
    return 0


def cmd_key_grant(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        key = (
            admin.grant_key(args.name, args.grantee, args.allow_unknown_grantee)
            if args.key_command == "grant"
            else admin.ungrant_key(args.name, args.grantee)
        )
        _print_key(key, args.json)
    return 0


def cmd_key_destroy(args: argparse.Namespace) -> int:
    confirm.refuse_unconfirmable(args, "key destroy")
    with _admin(args) as admin:
        confirm.ask(args, "key destroy", lambda: confirm.destroy_summary(admin, args.name, args.version))
        _print_key(admin.destroy_key_version(args.name, args.version), args.json)
    return 0


def cmd_key_state(args: argparse.Namespace) -> int:
    """key disable / key enable: idempotent, as AWS KMS; a repeat says so and exits 0."""
    with _admin(args) as admin:
        if args.key_command == "disable":
            resp = admin.disable_key(args.name, args.reason)
        else:
            resp = admin.enable_key(args.name)
    key = resp.key
    if args.json:
        print_json({**_key_json(key), "changed": resp.changed})
    elif args.key_command == "disable" and resp.changed:
        print(f"key {key.name} disabled: no version is released until kms-server key enable {key.name}")
    elif args.key_command == "disable":
        print(
            f"key {key.name} was already disabled since {iso(key.disabled_at)} ({key.disabled_reason}):"
            " nothing changed; the first reason stays"
        )
    else:
        done = (
            "enabled: its versions are released again"
            if resp.changed
            else "was not disabled: nothing changed"
        )
        print(f"key {key.name} {done}")
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        keys = admin.list_keys().keys
    now = int(time.time())
    if args.json:
        print_json([key_json(k, now) for k in keys])
    else:
        print_table(
            ["NAME", "TYPE", "STATE", "CURRENT", "VERSIONS", "GRANTS", "EXPIRES", "ROTATES"],
            [
                [
                    k.name,
                    k.key_type or "aes-256",
                    State(_state_text(k)),
                    str(k.current_version),
                    " ".join(f"v{v.version}:{v.state}" for v in k.versions),
                    ",".join(k.grants) or "-",
                    When(k.expires_at, _expires_cell(k.expires_at, now), expiry_tone(k.expires_at, now)),
                    period_text(k.rotate_every) or "-",
                ]
                for k in keys
            ],
        )
    return 0


def _expires_cell(expires_at: int, now: int) -> str:
    """The expiry in `key list`, marked when within 7 days or past: '!' draws the eye in a column."""
    if not expires_at:
        return "-"
    mark = expiry_mark(expires_at, now)
    return f"{iso(expires_at)} !{mark.upper().replace(' ', '-')}" if mark else iso(expires_at)


def add_key(sub: Subcommands, common: ArgumentParser) -> None:
    key = sub.add_parser(
        "key", help="AES keys and key pairs: create, rotate, grant, list, show, set, destroy, disable, enable"
    ).add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    kc = key.add_parser("create", parents=[common], help="create a key (version 1)")
    kc.add_argument("name", nargs="?", help="the key's name (asked for on a terminal when absent)")
    kc.add_argument("--grant", action="append", help="agent:NAME or group:NAME, repeatable")
    kc.add_argument(
        "--type",
        choices=KEY_TYPES,
        default="aes-256",
        help="aes-256 (default), or a key pair the server generates (agents sign with it; fetch-key)",
    )
    kc.set_defaults(func=cmd_key_create)
    unknown_grantee = (
        "accept agent:NAME for an agent neither enrolled nor named by an unused join token (warns);"
        " refused without it"
    )
    kc.add_argument("--allow-unknown-grantee", action="store_true", help=unknown_grantee)
    add_schedule_options(kc, clearing=False)
    kr = key.add_parser(
        "rotate", parents=[common], help="make a new current version; older ones still decrypt"
    )
    kr.add_argument("name")
    kr.set_defaults(func=cmd_key_rotate)
    for verb, text in (("grant", "let an agent or group fetch the key"), ("ungrant", "withdraw a grant")):
        kg = key.add_parser(verb, parents=[common], help=text)
        kg.add_argument("name")
        kg.add_argument("grantee", help="agent:NAME or group:NAME")
        if verb == "grant":
            kg.add_argument("--allow-unknown-grantee", action="store_true", help=unknown_grantee)
        kg.set_defaults(func=cmd_key_grant)
    kl = key.add_parser("list", parents=[common], help="list keys, versions and grants (never key material)")
    kl.set_defaults(func=cmd_key_list)
    kd = key.add_parser("destroy", parents=[common], help="erase one non-current version for good")
    kd.add_argument("name")
    kd.add_argument("--version", type=int, required=True)
    confirm.add_yes(kd)
    kd.set_defaults(func=cmd_key_destroy)
    ks = key.add_parser(
        "disable", parents=[common], help="stop releasing every version of a key, until enabled (reversible)"
    )
    ks.add_argument("name")
    ks.add_argument(
        "--reason",
        required=True,
        help="why, in one line (up to 200 characters): agents granted the key see it",
    )
    ke = key.add_parser("enable", parents=[common], help="release a disabled key's versions again")
    ke.add_argument("name")
    for p in (ks, ke):
        p.set_defaults(func=cmd_key_state)
    for p in (kc, kr, kd, ks, ke, *[key.choices[v] for v in ("grant", "ungrant")]):
        p.add_argument("--json", action="store_true")
    add_listing_options(kl)
    add_set_and_show(key, common)
