"""kms-agent shell: the interactive shell (kms/shell.py) over kms-agent's own parser, with live
names from the state dir, a menu of the common tasks, and its history in the state dir."""

from __future__ import annotations

import argparse

from agent.commands import complete
from agent.config import apply_config
from agent.context import state_dir
from kms.cli import ArgumentParser, Subcommands, run_main
from kms.errors import InvalidArgument
from kms.menu import Ask, Task
from kms.prompts import is_interactive

__all__ = ["add_shell"]

MENU = (
    Task("show this agent's identity", ("status",)),
    Task("fetch a key to a file", ("fetch-key",), (Ask("key name", kind="keys"), Ask("file", "--out"))),
    Task(
        "encrypt a file",
        ("encrypt",),
        (Ask("key name", "--key", "keys"), Ask("file to encrypt"), Ask("encrypted file to write")),
    ),
    Task("decrypt a file", ("decrypt",), (Ask("encrypted file"), Ask("file to write"))),
    Task("sign a file", ("sign",), (Ask("file to sign"), Ask("signature file", "--out", required=False))),
    Task("verify a signature", ("verify",), (Ask("signed file"), Ask("signature file"))),
    Task("renew this agent's certificate now", ("renew",)),
)


def add_shell(sub: Subcommands, common: ArgumentParser) -> None:
    p = sub.add_parser(
        "shell",
        parents=[common],
        help="an interactive shell: every command without 'kms-agent', help, a menu, Tab completion",
        description="Type kms-agent's commands without 'kms-agent'. Tab completes commands, flags and"
        " the names this agent knows; help COMMAND shows a command's help; menu walks through the common"
        " tasks. Run with no command on a terminal, kms-agent opens it too.",
        epilog="example:\n  kms-agent shell --dir /var/lib/kms-agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_cmd_shell)


def _cmd_shell(args: argparse.Namespace) -> int:
    from agent.cli import build_parser  # the whole parser: this module is one of its parts
    from kms.shell import Shell, history_in  # prompt_toolkit: loaded only when a shell opens

    if not is_interactive():
        raise InvalidArgument("the shell needs a terminal (stdin and stdout): run kms-agent COMMAND instead")
    state = state_dir(args)
    base = ["--dir", str(state.path), *(["--config", args.config] if args.config else [])]
    shell = Shell(
        build_parser(),
        rule=complete.rule,
        live=lambda kind, words: complete.live(args, kind, [*base, *words]),
        run=lambda words: run_main("kms-agent", build_parser(), [*base, *words], prepare=apply_config),
        history=history_in(state.path),
        menu=MENU,
    )
    return shell.loop()
