"""What the interactive shells are made of, without the terminal library: the menu's tasks and
the values they ask for, and whether a command line holds only the program's own options (then
a terminal gets the shell). Kept apart from kms/shell.py so that every command's start, which
asks only_options, does not load prompt_toolkit."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from kms.prompts import is_interactive

__all__ = ["Ask", "Task", "answers_to_args", "only_options", "wants_shell"]


def wants_shell(parser: argparse.ArgumentParser, argv: Sequence[str]) -> bool:
    """The program with no command (its own options alone), on a terminal: the shell opens;
    piped, the usage error as before."""
    return only_options(parser, argv) and is_interactive()


def only_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> bool:
    """Whether argv is only the program's own options (no subcommand): then a terminal gets the shell."""
    words = iter(argv)
    for word in words:
        action = parser._option_string_actions.get(word.split("=", 1)[0])
        if action is None or action.help == argparse.SUPPRESS or word in ("-h", "--help"):
            return False
        if action.nargs != 0 and "=" not in word:
            next(words, None)
    return True


@dataclass(frozen=True)
class Ask:
    """One value the menu asks for: a positional (flag None) or a flag's value."""

    prompt: str
    flag: str | None = None
    kind: str | None = None
    required: bool = True
    # Several values, comma-separated: the flag is repeated for each.
    several: bool = False


@dataclass(frozen=True)
class Task:
    title: str
    command: tuple[str, ...]
    asks: tuple[Ask, ...] = ()


def answers_to_args(task: Task, answers: Sequence[str]) -> list[str]:
    argv = list(task.command)
    for ask, answer in zip(task.asks, answers, strict=True):
        values = [v.strip() for v in answer.split(",") if v.strip()] if ask.several else [answer]
        for value in values if answer else []:
            argv += [value] if ask.flag is None else [ask.flag, value]
    return argv
