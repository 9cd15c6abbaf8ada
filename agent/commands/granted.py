"""kms-agent keys: the keys this agent is granted, and their versions it may still fetch (nothing
is released: ListGrantedKeys answers with names and numbers only)."""

from __future__ import annotations

import argparse

from agent.commands import add_renewal_options
from agent.context import connect
from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_table

__all__ = ["add_keys", "cmd_keys"]


def cmd_keys(args: argparse.Namespace) -> int:
    _, client = connect(args)
    with client:
        keys = client.list_granted_keys().keys
    if args.json:
        print_json(
            [
                {
                    "name": k.name,
                    "type": k.key_type or "aes-256",
                    "current_version": k.current_version,
                    "versions": list(k.versions),
                }
                for k in keys
            ]
        )
    else:
        print_table(
            ["NAME", "TYPE", "CURRENT", "VERSIONS"],
            [
                [
                    k.name,
                    k.key_type or "aes-256",
                    str(k.current_version),
                    " ".join(map(str, k.versions)) or "-",
                ]
                for k in keys
            ],
        )
    return 0


def add_keys(sub: Subcommands, common: ArgumentParser) -> None:
    ks = sub.add_parser(
        "keys", parents=[common], help="list the keys this agent is granted and the versions it may fetch"
    )
    add_listing_options(ks)
    add_renewal_options(ks)
    ks.set_defaults(func=cmd_keys)
