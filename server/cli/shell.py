"""kms-server shell: the interactive shell (kms/shell.py) over kms-server's own parser, with live
names from the admin socket, a menu of the common admin tasks, and its history in the data dir."""

from __future__ import annotations

import argparse

from kms.cli import ArgumentParser, Subcommands, run_main
from kms.errors import InvalidArgument
from kms.menu import Ask, Task
from kms.prompts import is_interactive
from server.cli import complete
from server.cli.context import data_dir

__all__ = ["add_shell"]

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


def _cmd_shell(args: argparse.Namespace) -> int:
    from kms.shell import Shell, history_in  # prompt_toolkit: loaded only when a shell opens
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
        history=history_in(data_dir(args)),
        menu=MENU,
    )
    return shell.loop()
