"""An interactive shell over a program's own argparse parser (prompt_toolkit), shared by kms-server
and kms-agent: every subcommand without the program's name, `help` and `help COMMAND`, a `menu` of
common tasks that asks for each value, Tab completion of subcommands, flags, choices and live
names, and a history that never keeps a secret.

Like kms/cli.py, the one place both command lines share terminal handling; it opens no file,
socket or process itself: the program passes the history, how to run a command line and where
live names come from.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from kms.completion import HIDDEN, Rule
from kms.menu import Ask, Task, answers_to_args
from kms.securefile import private_file

__all__ = ["ParserCompleter", "SecretFreeHistory", "Shell", "has_secret", "history_in"]

SHELL_WORDS = ("help", "menu", "exit")
# Commands the shell does not offer: itself, and the hidden one its scripts call.
_NOT_OFFERED = frozenset({"shell", HIDDEN})

# (kind, words typed so far) -> the live names of that kind; [] when they cannot be had.
Live = Callable[[str, list[str]], list[str]]
# Runs one command line (without the program's name) as the program would; its exit code.
Run = Callable[[list[str]], int]

# A join token (kms/tokens.py: 16 hex, a dot, 43 base64url), and the flags whose lines carry one
# or print a key: such lines are never written to the history file.
_TOKEN = re.compile(r"[0-9a-f]{16}\.[A-Za-z0-9_-]{43}")
_SECRET_FLAGS = ("--token", "--include-key")


def has_secret(line: str) -> bool:
    """Whether a typed line holds a secret or asks for one to be printed: kept out of history.

    A flag cut short (--tok, --include=) counts too: the parsers refuse abbreviations, but the
    line was typed, with whatever followed it, and a refused line is still kept in history.
    """
    return bool(_TOKEN.search(line)) or any(_secret_flag(word) for word in line.split())


def _secret_flag(word: str) -> bool:
    flag = word.split("=", 1)[0]
    return len(flag) >= 4 and flag.startswith("--") and any(s.startswith(flag) for s in _SECRET_FLAGS)


def history_in(directory: Path) -> SecretFreeHistory | None:
    """shell-history (0600) in a program's data or state dir; None (this session only, in
    memory) while that dir does not exist."""
    if not directory.is_dir():
        return None
    return SecretFreeHistory(str(private_file(directory / "shell-history")))


class SecretFreeHistory(FileHistory):
    """A history file that never receives a line holding a secret (it stays in memory, this session)."""

    def store_string(self, string: str) -> None:
        if not has_secret(string):
            super().store_string(string)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {k: v for k, v in action.choices.items() if k not in _NOT_OFFERED}
    return {}


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not a.option_strings
        and not isinstance(a, argparse._SubParsersAction)
        and a.help != argparse.SUPPRESS
    ]


class ParserCompleter(Completer):
    """Completes a command line of the parser: subcommands, flags, choices, live names."""

    def __init__(self, parser: argparse.ArgumentParser, rule: Rule, live: Live) -> None:
        self._parser, self._rule, self._live = parser, rule, live

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text[-1].isspace() else words.pop()
        for value in self.candidates(words, current):
            if value.startswith(current):
                yield Completion(value, start_position=-len(current))

    def candidates(self, words: list[str], current: str) -> list[str]:
        parser, seen = self._parser, 0
        path: tuple[str, ...] = ()
        expecting: argparse.Action | None = None
        for word in words[1:] if words[:1] == ["help"] else words:
            if expecting is not None:
                expecting = None
            elif word.startswith("-"):
                action = parser._option_string_actions.get(word)
                expecting = action if action is not None and action.nargs != 0 else None
            elif word in _subcommands(parser):
                parser, path, seen = _subcommands(parser)[word], (*path, word), 0
            else:
                seen += 1
        if expecting is not None:
            return self._values(path, expecting, words)
        if current.startswith("-"):
            return sorted(o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings)
        if subs := _subcommands(parser):
            return [*subs, *(SHELL_WORDS if not path and words[:1] != ["help"] else ())]
        positionals = _positionals(parser)
        return self._values(path, positionals[seen], words) if seen < len(positionals) else []

    def _values(self, path: tuple[str, ...], action: argparse.Action, words: list[str]) -> list[str]:
        if action.choices:
            return [str(c) for c in action.choices]
        kind = self._rule(path, action)
        if kind is None:
            return []
        try:
            return self._live(kind, words)
        except Exception:  # completion stays silent
            return []


class _Values(Completer):
    """Completes one answer of the menu from the live names of a kind."""

    def __init__(self, live: Live, kind: str | None) -> None:
        self._live, self._kind = live, kind

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        current = document.text_before_cursor.split(",")[-1].strip()
        try:
            values = self._live(self._kind, []) if self._kind else []
        except Exception:
            values = []
        for value in values:
            if value.startswith(current):
                yield Completion(value, start_position=-len(current))


class Shell:
    """The read-run loop: Ctrl-C cancels the line, Ctrl-D (or exit) leaves; errors are one line."""

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        *,
        rule: Rule,
        live: Live,
        run: Run,
        history: History | None,
        menu: Sequence[Task],
    ) -> None:
        self._parser, self._live, self._run, self._menu = parser, live, run, menu
        self._prog = parser.prog
        self._session: PromptSession[str] = PromptSession(
            history=history or InMemoryHistory(),
            completer=ParserCompleter(parser, rule, live),
            complete_while_typing=False,
        )
        # The menu's answers are not commands: they stay out of the history.
        self._answers: PromptSession[str] = PromptSession(
            history=InMemoryHistory(), complete_while_typing=False
        )

    def loop(self) -> int:
        print(
            f"{self._prog} shell: type commands without '{self._prog}'; help, help COMMAND, menu;"
            " Tab completes; Ctrl-D leaves"
        )
        while True:
            try:
                line = self._session.prompt(f"{self._prog}> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return 0
            if self.one(line) is None:
                return 0

    def one(self, line: str) -> int | None:
        """Runs one typed line; its exit code, or None when the shell should end."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return self._error(f"cannot read that line: {exc}")
        if not words:
            return 0
        if words[0] in ("exit", "quit"):
            return None
        if words[0] == "help":
            return self._help(words[1:])
        if words[0] == "menu":
            return self._menu_task()
        if not words[0].startswith("-") and words[0] not in _subcommands(self._parser):
            return self._error(f"no command {words[0]!r}: type help for the list, or menu")
        return self._command(words)

    def _command(self, words: list[str]) -> int:
        try:
            return self._run(words)
        except SystemExit as exc:  # --help, or argparse's own exit
            return exc.code if isinstance(exc.code, int) else 0

    def _error(self, message: str) -> int:
        print(f"{self._prog}: error: {message}")
        return 2

    def _help(self, words: list[str]) -> int:
        parser = self._parser
        for word in words:
            subs = _subcommands(parser)
            if word not in subs:
                return self._error(f"no command {' '.join(words)!r}: type help for the list")
            parser = subs[word]
        parser.print_help()
        if not words:
            print("\nin the shell also: help [COMMAND], menu (common tasks, step by step), exit")
        return 0

    def _menu_task(self) -> int:
        for number, task in enumerate(self._menu, 1):
            print(f"  {number}. {task.title}")
        try:
            choice = self._answers.prompt(f"choose 1-{len(self._menu)}: ").strip()
            if not choice.isdigit() or not 1 <= int(choice) <= len(self._menu):
                return self._error(f"no task {choice!r} in the menu")
            task = self._menu[int(choice) - 1]
            answers = [self._ask(ask) for ask in task.asks]
        except (KeyboardInterrupt, EOFError):
            print("cancelled")
            return 130
        except ValueError as exc:
            return self._error(str(exc))
        argv = answers_to_args(task, answers)
        print(f"→ {self._prog} {shlex.join(argv)}")
        return self._command(argv)

    def _ask(self, ask: Ask) -> str:
        hint = "" if ask.required else " (optional)"
        answer = self._answers.prompt(
            f"{ask.prompt}{hint}: ", completer=_Values(self._live, ask.kind)
        ).strip()
        if ask.required and not answer:
            raise ValueError(f"{ask.prompt} is needed: nothing done")
        return answer
