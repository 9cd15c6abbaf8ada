"""kms-agent shell: the interactive shell (kms/shell.py) over kms-agent's own parser, with live
names from the state dir, a menu of the common tasks, and its history in the state dir."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.commands import complete
from agent.config import apply_config
from agent.context import state_dir
from kms.cli import ArgumentParser, Subcommands, run_main
from kms.errors import InvalidArgument
from kms.menu import Ask, Task, only_options
from kms.prompts import is_interactive

if TYPE_CHECKING:
    from kms.shell import SecretFreeHistory

__all__ = ["add_shell", "wants_shell"]

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


def wants_shell(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """kms-agent with no command (its options alone), on a terminal: the shell; piped, the usage error."""
    return only_options(parser, argv) and is_interactive()


def _cmd_shell(args: argparse.Namespace) -> int:
    from agent.cli import build_parser  # the whole parser: this module is one of its parts
    from kms.shell import Shell  # prompt_toolkit: loaded only when a shell opens

    if not is_interactive():
        raise InvalidArgument("the shell needs a terminal (stdin and stdout): run kms-agent COMMAND instead")
    state = state_dir(args)
    base = ["--dir", str(state.path), *(["--config", args.config] if args.config else [])]
    shell = Shell(
        build_parser(),
        rule=complete.rule,
        live=lambda kind, words: complete.live(args, kind, [*base, *words]),
        run=lambda words: run_main("kms-agent", build_parser(), [*base, *words], prepare=apply_config),
        history=_history(state.path),
        menu=MENU,
    )
    return shell.loop()


def _history(directory: Path) -> SecretFreeHistory | None:
    """shell-history (0600) in the state dir; None (this session only) before there is one."""
    if not directory.is_dir():
        return None
    path = directory / "shell-history"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    os.chmod(path, 0o600)
    from kms.shell import SecretFreeHistory

    return SecretFreeHistory(str(path))
