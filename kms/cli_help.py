"""What both command lines say about themselves: --version, and usage errors that point to the right help.

argparse reports arguments no parser took ("unrecognized arguments") on the
top-level parser, so its hint named ``kms-agent --help`` even after
``kms-agent check``. ``SubcommandErrors`` remembers the deepest parser that
parse_args went through and lets that one report them, so the hint names the
subcommand's own help.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

__all__ = ["DISTRIBUTION", "SubcommandErrors", "add_version", "document", "program_version", "subcommands"]

DISTRIBUTION = "seed-kms"


def program_version(prog: str) -> str:
    """ "kms-agent 0.1.0": the installed package's version, from its metadata."""
    # Imported here: importlib.metadata costs about 25 ms at every start of every command.
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        number = "unknown (not installed)"
    return f"{prog} {number}"


class _Version(argparse.Action):
    """argparse's "version" action, reading the version only when --version is given."""

    def __init__(self, option_strings: Sequence[str], dest: str, prog: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)
        self._prog = prog

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        print(program_version(self._prog))  # on stdout, as argparse's own
        parser.exit()


def add_version(parser: argparse.ArgumentParser, prog: str) -> None:
    parser.add_argument("--version", action=_Version, prog=prog, help="print the version and exit")


# The parsers parse_args went through, outermost first: a subcommand's parser runs inside its parent's.
_chosen: list[argparse.ArgumentParser] = []


class SubcommandErrors(argparse.ArgumentParser):
    """An ArgumentParser whose "unrecognized arguments" error comes from the subcommand that was chosen."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        _chosen.append(self)
        return super().parse_known_args(args, namespace)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> argparse.Namespace:
        _chosen.clear()
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            deepest = _chosen[-1] if _chosen else self
            deepest.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, except that an example epilog keeps its lines (a command is not prose)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), summary: str | None = None
) -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """Every runnable subcommand: ("key create", its parser, the one line its parent lists it with)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [(" ".join(path), parser, summary)]
    found = []
    for group in groups:
        lines = {choice.dest: choice.help for choice in group._choices_actions}
        for name, child in group.choices.items():
            found += subcommands(child, (*path, name), lines.get(name))
    return found


def document(
    parser: argparse.ArgumentParser,
    examples: Mapping[str, str],
    arguments: Mapping[str, Mapping[str, str]],
    common: Mapping[str, str],
) -> None:
    """Completes every subcommand's --help: a description line (the line its parent lists it with), an
    example (examples["key create"]), and help for each argument that has none: arguments["key create"]
    by dest first, then common by dest (like "json")."""
    for path, sub, summary in subcommands(parser):
        sub.formatter_class = _Formatter
        if not sub.description and summary:
            sub.description = summary[0].upper() + summary[1:] + "."
        if path in examples:
            sub.epilog = "example:\n  " + examples[path]
        for action in sub._actions:
            if action.help is None:
                action.help = arguments.get(path, {}).get(action.dest) or common.get(action.dest)
