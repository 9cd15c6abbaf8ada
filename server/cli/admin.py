"""kms-server's admin commands over the admin socket: token, ca, agents, key, revoke, revocations,
backup, and how their answers are printed."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from kms.cli import ArgumentParser, Subcommands, print_json, print_table
from kms.durations import parse_duration
from kms.errors import InvalidArgument
from kms.events import describe, event_fields
from kms.revocation import HOLD, REASONS
from kms.v1 import admin_pb2
from server.cli.context import admin as _admin

__all__ = [
    "add_agents",
    "add_backup",
    "add_ca",
    "add_key",
    "add_revocations",
    "add_revoke",
    "add_token",
]


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_token_create(args: argparse.Namespace) -> int:
    ttl = int(parse_duration(args.ttl, what="--ttl").total_seconds()) if args.ttl else 0
    with _admin(args) as admin:
        resp = admin.create_join_token(args.name, args.group or [], ttl, args.allow_reenroll, args.replace)
    if args.json:
        print_json(
            {
                "token": resp.token,
                "token_id": resp.token_id,
                "name": resp.name,
                "groups": list(resp.groups),
                "expires_at": _iso(resp.expires_at),
            }
        )
    else:
        print(resp.token)
    return 0


def cmd_ca_fingerprint(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        print(admin.get_ca().fingerprint)
    return 0


def cmd_ca_cert(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        print(admin.get_ca().certificate_pem, end="")
    return 0


def cmd_agents_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        agents = admin.list_agents().agents
    if args.json:
        print_json(
            [
                {
                    "name": a.name,
                    "groups": list(a.groups),
                    "spiffe_id": a.spiffe_id,
                    "serial": a.serial,
                    "not_after": _iso(a.not_after),
                    "status": a.status,
                }
                for a in agents
            ]
        )
    else:
        print_table(
            ["NAME", "GROUPS", "SERIAL", "NOT AFTER", "STATUS"],
            [[a.name, ",".join(a.groups) or "-", a.serial, _iso(a.not_after), a.status] for a in agents],
        )
    return 0


def _key_json(key: admin_pb2.KeyInfo) -> dict[str, object]:
    return {
        "name": key.name,
        "current_version": key.current_version,
        "created_at": _iso(key.created_at),
        "versions": [
            {"version": v.version, "state": v.state, "created_at": _iso(v.created_at)} for v in key.versions
        ],
        "grants": list(key.grants),
        **_state_json(key),
    }


def _state_json(key: admin_pb2.KeyInfo) -> dict[str, object]:
    if not key.disabled:
        return {"state": "enabled"}
    return {"state": "disabled", "disabled_at": _iso(key.disabled_at), "disabled_reason": key.disabled_reason}


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
        f"{key.name}: {_state_text(key)}, current version {key.current_version} ({versions});"
        f" grants: {', '.join(key.grants) or '-'}"
    )


def cmd_key_create(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print_key(admin.create_key(args.name, args.grant or [], args.allow_unknown_grantee), args.json)
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
    with _admin(args) as admin:
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
            f"key {key.name} was already disabled since {_iso(key.disabled_at)} ({key.disabled_reason}):"
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
    if args.json:
        print_json([_key_json(k) for k in keys])
    else:
        print_table(
            ["NAME", "STATE", "CURRENT", "VERSIONS", "GRANTS"],
            [
                [
                    k.name,
                    _state_text(k),
                    str(k.current_version),
                    " ".join(f"v{v.version}:{v.state}" for v in k.versions),
                    ",".join(k.grants) or "-",
                ]
                for k in keys
            ],
        )
    return 0


def _print_revocation(resp: admin_pb2.RevokeResponse, as_json: bool) -> None:
    if as_json:
        fields: dict[str, object] = {**event_fields(resp.event), "already_revoked": resp.already_revoked}
        if resp.cascaded:
            fields["cascaded"] = [event_fields(e) for e in resp.cascaded]
        print_json(fields)
    else:
        verb = "held" if resp.event.reason == HOLD else "revoked"
        print((f"already {verb}: " if resp.already_revoked else f"{verb}: ") + describe(resp.event))
        for event in resp.cascaded:
            print("renewed from it, revoked too: " + describe(event))


def cmd_revoke(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        if args.revoke_command == "cert":
            resp = admin.revoke_certificate(args.serial, args.reason)
        elif args.revoke_command == "agent":
            if args.hold and args.reason not in ("", HOLD):
                raise InvalidArgument(
                    f"--hold is a reason (certificateHold): leave out --reason {args.reason}"
                )
            resp = admin.revoke_agent(args.name, HOLD if args.hold else args.reason)
        else:
            resp = admin.revoke_key(args.name, args.version, args.reason)
    _print_revocation(resp, args.json)
    return 0


def cmd_revocations_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        events = admin.list_revocations(active=args.active).events
    if args.json:
        print_json([event_fields(e) for e in events])
    else:
        for event in events:
            print(describe(event))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    target = Path(args.file).resolve()
    with _admin(args) as admin:
        resp = admin.backup(str(target))
    print(f"backup written to {resp.path} ({resp.bytes} bytes); it does not contain the master key")
    return 0


def add_token(sub: Subcommands, common: ArgumentParser) -> None:
    token = sub.add_parser("token", help="join tokens").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    create = token.add_parser("create", parents=[common], help="create a one-time join token for an agent")
    create.add_argument("--name", required=True, help="the agent's name")
    create.add_argument("--group", action="append", help="a group the agent joins, repeatable")
    create.add_argument("--ttl", help="token lifetime, e.g. 15m (default: the server's --token-ttl)")
    create.add_argument("--json", action="store_true", help="print token, name, groups and expiry as JSON")
    create.add_argument(
        "--allow-reenroll", action="store_true", help="let a revoked agent of this name enroll again"
    )
    create.add_argument(
        "--replace",
        action="store_true",
        help="for a name that holds a valid certificate: enrolling with this token revokes it (superseded);"
        " without it such a name is refused, so no two machines hold one identity",
    )
    create.set_defaults(func=cmd_token_create)


def add_ca(sub: Subcommands, common: ArgumentParser) -> None:
    ca = sub.add_parser("ca", help="the certificate authority").add_subparsers(
        dest="ca_command", required=True, metavar="COMMAND"
    )
    ca.add_parser("fingerprint", parents=[common], help="print the CA fingerprint agents pin").set_defaults(
        func=cmd_ca_fingerprint
    )
    ca.add_parser("cert", parents=[common], help="print the CA certificate (PEM)").set_defaults(
        func=cmd_ca_cert
    )


def add_agents(sub: Subcommands, common: ArgumentParser) -> None:
    agents = sub.add_parser("agents", help="enrolled agents").add_subparsers(
        dest="agents_command", required=True, metavar="COMMAND"
    )
    ls = agents.add_parser("list", parents=[common], help="list enrolled agents")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_agents_list)


def add_key(sub: Subcommands, common: ArgumentParser) -> None:
    key = sub.add_parser(
        "key", help="AES keys: create, rotate, grant, list, destroy, disable, enable"
    ).add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    kc = key.add_parser("create", parents=[common], help="create a key (version 1)")
    kc.add_argument("name")
    kc.add_argument("--grant", action="append", help="agent:NAME or group:NAME, repeatable")
    kc.set_defaults(func=cmd_key_create)
    unknown_grantee = (
        "accept agent:NAME for an agent neither enrolled nor named by an unused join token (warns);"
        " refused without it"
    )
    kc.add_argument("--allow-unknown-grantee", action="store_true", help=unknown_grantee)
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
    for p in (kc, kr, kl, kd, ks, ke, *[key.choices[v] for v in ("grant", "ungrant")]):
        p.add_argument("--json", action="store_true")


def add_revoke(sub: Subcommands, common: ArgumentParser) -> None:
    reasons = f"RFC 5280 reason: {', '.join(REASONS)} (default unspecified); {HOLD} (not for keys) suspends until released"
    revoke = sub.add_parser("revoke", help="revoke a certificate, an agent or a key version").add_subparsers(
        dest="revoke_command", required=True, metavar="WHAT"
    )
    rc = revoke.add_parser("cert", parents=[common], help="revoke one certificate by serial")
    rc.add_argument("serial")
    ra = revoke.add_parser(
        "agent", parents=[common], help="revoke every certificate of an agent; bar re-enrollment"
    )
    ra.add_argument("name")
    ra.add_argument(
        "--hold",
        action="store_true",
        help="suspend instead (certificateHold): holds its certificates in force, until kms-server release agent",
    )
    rk = revoke.add_parser(
        "key", parents=[common], help="mark a key version compromised (rotates if current)"
    )
    rk.add_argument("name")
    rk.add_argument("--version", type=int, required=True)
    for p in (rc, ra, rk):
        p.add_argument("--reason", default="", help=reasons)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_revoke)


def add_revocations(sub: Subcommands, common: ArgumentParser) -> None:
    revocations = sub.add_parser("revocations", help="the revocation event log").add_subparsers(
        dest="revocations_command", required=True, metavar="COMMAND"
    )
    rl = revocations.add_parser(
        "list", parents=[common], help="list every revocation event and its state (in force, released)"
    )
    rl.add_argument("--json", action="store_true")
    rl.add_argument("--active", action="store_true", help="only the revocations in force")
    rl.set_defaults(func=cmd_revocations_list)


def add_backup(sub: Subcommands, common: ArgumentParser) -> None:
    bk = sub.add_parser(
        "backup", parents=[common], help="write a consistent online backup (no master key in it)"
    )
    bk.add_argument("file", metavar="FILE")
    bk.set_defaults(func=cmd_backup)
