"""kms-server shell: the interactive shell (kms/shell.py) over kms-server's own parser, with live
names from the admin socket, a menu of the common admin tasks, and its history in the data dir."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kms.cli import ArgumentParser, Subcommands, run_main
from kms.errors import InvalidArgument
from kms.menu import Ask, Task, only_options
from kms.prompts import is_interactive
from server.cli import complete
from server.cli.context import data_dir

if TYPE_CHECKING:
    from kms.shell import SecretFreeHistory

__all__ = ["add_shell", "wants_shell"]

MENU = (
    Task(
        "create a key",
        ("key", "create"),
        (
            Ask("key name"),
            Ask(
                "grant to (agent:NAME or group:NAME, comma-separated)",
                "--grant",
                kind="grants",
                required=False,
                several=True,
            ),
        ),
    ),
    Task(
        "create a join token for a new agent",
        ("token", "create"),
        (
            Ask("agent name", "--name"),
            Ask("groups (comma-separated)", "--group", kind="groups", required=False, several=True),
        ),
    ),
    Task(
        "grant a key",
        ("key", "grant"),
        (Ask("key name", kind="keys"), Ask("grant to (agent:NAME or group:NAME)", kind="grants")),
    ),
    Task("rotate a key", ("key", "rotate"), (Ask("key name", kind="keys"),)),
    Task("show a key", ("key", "show"), (Ask("key name", kind="keys"),)),
    Task("list keys", ("key", "list")),
    Task("list agents", ("agents", "list")),
    Task(
        "revoke an agent",
        ("revoke", "agent"),
        (Ask("agent name", kind="agents"), Ask("reason", "--reason", required=False)),
    ),
    Task("list revocations in force", ("revocations", "list", "--active")),
)


def add_shell(sub: Subcommands, common: ArgumentParser) -> None:
    p = sub.add_parser(
        "shell",
        parents=[common],
        help="an interactive shell: every command without 'kms-server', help, a menu, Tab completion",
        description="Type kms-server's commands without 'kms-server'. Tab completes commands, flags and"
        " the names of keys, agents, groups and serials; help COMMAND shows a command's help; menu walks"
        " through the common tasks. Run with no command on a terminal, kms-server opens it too.",
        epilog="example:\n  kms-server shell --data-dir /srv/kms",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_cmd_shell)


def wants_shell(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """kms-server with no command (its options alone), on a terminal: the shell; piped, the usage error."""
    return only_options(parser, argv) and is_interactive()


def _cmd_shell(args: argparse.Namespace) -> int:
    from kms.shell import Shell  # prompt_toolkit: loaded only when a shell opens
    from server.cli import build_parser  # the whole parser: this module is one of its parts

    if not is_interactive():
        raise InvalidArgument("the shell needs a terminal (stdin and stdout): run kms-server COMMAND instead")
    base = [
        f
        for name in ("data_dir", "config")
        if getattr(args, name, None)
        for f in (f"--{name.replace('_', '-')}", getattr(args, name))
    ]
    shell = Shell(
        build_parser(),
        rule=complete.rule,
        live=lambda kind, words: complete.live(args, kind, [*base, *words]),
        run=lambda words: run_main("kms-server", build_parser(), [*base, *words]),
        history=_history(data_dir(args)),
        menu=MENU,
    )
    return shell.loop()


def _history(directory: Path) -> SecretFreeHistory | None:
    """shell-history (0600) in the data dir; None (this session only) while there is no data dir."""
    if not directory.is_dir():
        return None
    path = directory / "shell-history"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    os.chmod(path, 0o600)
    from kms.shell import SecretFreeHistory

    return SecretFreeHistory(str(path))
