"""kms-server's admin commands over the admin socket: token, ca, agents, revoke, revocations,
backup, and how their answers are printed (key commands: server/cli/keys.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_table
from kms.durations import parse_duration
from kms.errors import InvalidArgument
from kms.events import describe, event_fields, state_text, subject
from kms.output import State, When
from kms.prompts import ask_text, value_or_ask
from kms.revocation import HOLD, REASONS
from kms.v1 import admin_pb2
from server.cli import confirm
from server.cli.admin_client import AdminClient
from server.cli.ca import add_ca_rotation
from server.cli.context import admin as _admin
from server.cli.context import iso

__all__ = [
    "add_agents",
    "add_backup",
    "add_ca",
    "add_revocations",
    "add_revoke",
    "add_token",
]


def _ask_for_agent(args: argparse.Namespace) -> None:
    """token create without --name: on a terminal, asks for the name and the groups."""
    if args.name:
        return
    args.name = value_or_ask(None, "agent name", flag="--name", prog="kms-server token create")
    if not args.group:
        groups = ask_text("groups (comma-separated, empty for none)", what="--group", optional=True)
        args.group = [g.strip() for g in groups.split(",") if g.strip()]


def cmd_token_create(args: argparse.Namespace) -> int:
    _ask_for_agent(args)
    ttl = int(parse_duration(args.ttl, what="--ttl").total_seconds()) if args.ttl else 0
    if args.replace:
        confirm.refuse_unconfirmable(args, "token create --replace")
    with _admin(args) as admin:
        if args.replace:
            confirm.ask(args, "token create --replace", lambda: confirm.replace_summary(admin, args.name))
        resp = admin.create_join_token(args.name, args.group or [], ttl, args.allow_reenroll, args.replace)
    if args.json:
        print_json(
            {
                "token": resp.token,
                "token_id": resp.token_id,
                "name": resp.name,
                "groups": list(resp.groups),
                "expires_at": iso(resp.expires_at),
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
                    "not_after": iso(a.not_after),
                    "status": a.status,
                }
                for a in agents
            ]
        )
    else:
        print_table(
            ["NAME", "GROUPS", "SERIAL", "NOT AFTER", "STATUS"],
            [
                [a.name, ",".join(a.groups) or "-", a.serial, When(a.not_after), State(a.status)]
                for a in agents
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


def _revoke_summary(args: argparse.Namespace, admin: AdminClient) -> str | None:
    if args.revoke_command == "cert":
        return confirm.cert_summary(admin, args.serial, args.reason)
    if args.revoke_command == "agent":
        return confirm.agent_summary(admin, args.name)
    return confirm.key_revoke_summary(admin, args.name, args.version)


def cmd_revoke(args: argparse.Namespace) -> int:
    # A hold is undone by kms-server release: only a revocation for good is confirmed.
    final = args.reason != HOLD and not getattr(args, "hold", False)
    command = f"revoke {args.revoke_command}"
    if final:
        confirm.refuse_unconfirmable(args, command)
    with _admin(args) as admin:
        if final:
            confirm.ask(args, command, lambda: _revoke_summary(args, admin))
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
        print_table(
            ["SEQ", "AT", "EVENT", "REASON", "STATE"],
            [[f"#{e.seq}", When(e.at), subject(e), e.reason, State(state_text(e))] for e in events],
            lines=[describe(e) for e in events],
        )
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
    create.add_argument("--name", help="the agent's name (asked for on a terminal when absent)")
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
    confirm.add_yes(create)
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
    add_ca_rotation(ca, common)


def add_agents(sub: Subcommands, common: ArgumentParser) -> None:
    agents = sub.add_parser("agents", help="enrolled agents").add_subparsers(
        dest="agents_command", required=True, metavar="COMMAND"
    )
    ls = agents.add_parser("list", parents=[common], help="list enrolled agents")
    add_listing_options(ls)
    ls.set_defaults(func=cmd_agents_list)


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
        confirm.add_yes(p)
        p.set_defaults(func=cmd_revoke)


def add_revocations(sub: Subcommands, common: ArgumentParser) -> None:
    revocations = sub.add_parser("revocations", help="the revocation event log").add_subparsers(
        dest="revocations_command", required=True, metavar="COMMAND"
    )
    rl = revocations.add_parser(
        "list", parents=[common], help="list every revocation event and its state (in force, released)"
    )
    add_listing_options(rl)
    rl.add_argument("--active", action="store_true", help="only the revocations in force")
    rl.set_defaults(func=cmd_revocations_list)


def add_backup(sub: Subcommands, common: ArgumentParser) -> None:
    bk = sub.add_parser(
        "backup", parents=[common], help="write a consistent online backup (no master key in it)"
    )
    bk.add_argument("file", metavar="FILE")
    bk.set_defaults(func=cmd_backup)
