"""kms-agent: enroll with kms-server, then prove the identity over mutual TLS; the commands live in
agent/commands/, each module adding its own subcommands; this module only builds the parser."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent.commands import (
    GLOBAL_SETTINGS,
    complete,
    examples,
    exchange,
    granted,
    identity,
    keys,
    revocation,
    run,
    shell,
    signing,
)
from agent.config import apply_config
from kms.cli import ArgumentParser, command_parsers, run_main
from kms.cli_help import document
from kms.menu import wants_shell
from kms.settings import options

__all__ = ["main"]

# In --help's order.
_COMMANDS = (
    identity.add_enroll,
    run.add_run,
    identity.add_renew,
    identity.add_status,
    granted.add_keys,
    keys.add_fetch_key,
    keys.add_public_key,
    keys.add_encrypt,
    keys.add_decrypt,
    revocation.add_watch,
    exchange.add_exchange,
    exchange.add_listen,
    signing.add_sign,
    signing.add_verify,
    revocation.add_check,
    complete.add_completion,
    shell.add_shell,
)

_CONFIG = (("--config",), {"default": None, "help": "TOML config file (env KMS_AGENT_CONFIG)"})


def build_parser() -> ArgumentParser:
    settings = options(GLOBAL_SETTINGS)  # --renew-fraction: only under the commands that renew
    # --config keeps its place in --help, after --dir and --timeout.
    parser, common = command_parsers("kms-agent", "Seed KMS agent.", [*settings[:2], _CONFIG, *settings[2:]])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub, common)
    document(parser, examples.EXAMPLES, examples.ARGUMENTS, examples.COMMON)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = build_parser(), sys.argv[1:] if argv is None else list(argv)
    if wants_shell(parser, args):
        argv = [*args, "shell"]
    return run_main("kms-agent", parser, argv, prepare=complete.quiet(args, apply_config))


if __name__ == "__main__":
    raise SystemExit(main())
