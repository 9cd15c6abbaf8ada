"""kms-server: run the daemon, and talk to it over the admin socket.

This module only builds the parser: each command module (daemon, admin,
audit) adds its own subcommands, in the order ``kms-server --help`` lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kms.cli import ArgumentParser, command_parsers, run_main
from kms.cli_help import document
from kms.menu import wants_shell
from server.cli import admin, audit, complete, daemon, examples, keys, release, shell, top

__all__ = ["main"]

# In --help's order: the daemon's commands, the admin ones, restore beside backup, audit.
_COMMANDS = (
    daemon.add_run,
    daemon.add_init,
    daemon.add_config,
    admin.add_token,
    admin.add_ca,
    admin.add_agents,
    keys.add_key,
    admin.add_revoke,
    release.add_release,
    admin.add_revocations,
    admin.add_backup,
    daemon.add_restore,
    audit.add_audit,
    complete.add_completion,
    shell.add_shell,
    top.add_top,
)


def build_parser() -> ArgumentParser:
    parser, common = command_parsers(
        "kms-server",
        "Seed KMS server: CA and key distributor.",
        [
            (
                ("--data-dir",),
                {
                    "default": None,
                    "help": "data directory (env KMS_DATA_DIR; else the config file's data_dir;"
                    " default ~/.local/share/seed-kms)",
                },
            ),
            (
                ("--config",),
                {
                    "default": None,
                    "help": "TOML config file (env KMS_CONFIG): keys are the flag names; flags and KMS_*"
                    " variables win. Every command reads it, so admin commands find the same data dir",
                },
            ),
        ],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub, common)
    document(parser, examples.EXAMPLES, examples.ARGUMENTS, examples.COMMON)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if wants_shell(parser, args):
        args = argv = [*args, "shell"]
    # The daemon keeps gRPC's own error log; admin commands print one line.
    return run_main("kms-server", parser, argv, quiet_grpc=args[:1] != ["run"])


if __name__ == "__main__":
    raise SystemExit(main())
