"""kms-server release: lift a hold (RFC 5280 certificateHold) of a certificate or an agent."""

from __future__ import annotations

import argparse

from kms.cli import ArgumentParser, Subcommands, print_json
from kms.events import describe, event_fields
from server.cli.context import admin as _admin

__all__ = ["add_release"]


def cmd_release(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        if args.release_command == "cert":
            resp = admin.release_certificate(args.serial)
        else:
            resp = admin.release_agent(args.name)
    if args.json:
        print_json(event_fields(resp.event))
    else:
        print("released: " + describe(resp.event))
    return 0


def add_release(sub: Subcommands, common: ArgumentParser) -> None:
    release = sub.add_parser(
        "release", help="lift a hold: the certificates work again, without enrolling again"
    ).add_subparsers(dest="release_command", required=True, metavar="WHAT")
    rc = release.add_parser("cert", parents=[common], help="lift the hold of one certificate, by serial")
    rc.add_argument("serial")
    ra = release.add_parser(
        "agent", parents=[common], help="lift what the agent's last hold (revoke agent --hold) still holds"
    )
    ra.add_argument("name")
    for p in (rc, ra):
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_release)
