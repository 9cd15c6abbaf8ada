"""What both command lines say about themselves: --version, and usage errors that point to the right help.

argparse reports arguments no parser took ("unrecognized arguments") on the
top-level parser, so its hint named ``kms-agent --help`` even after
``kms-agent check``. ``SubcommandErrors`` remembers the deepest parser that
parse_args went through and lets that one report them, so the hint names the
subcommand's own help.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["DISTRIBUTION", "SubcommandErrors", "add_version", "program_version"]

DISTRIBUTION = "seed-kms"


def program_version(prog: str) -> str:
    """ "kms-agent 0.1.0": the installed package's version, from its metadata."""
    try:
        number = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        number = "unknown (not installed)"
    return f"{prog} {number}"


def add_version(parser: argparse.ArgumentParser, prog: str) -> None:
    parser.add_argument(
        "--version", action="version", version=program_version(prog), help="print the version and exit"
    )


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
