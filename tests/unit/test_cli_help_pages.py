"""Every subcommand's --help of both programs (issue 17 §5): a description line, an example that the
parser accepts, and help for each argument, positionals (IN, OUT, NAME, ...) included."""

from __future__ import annotations

import argparse
import shlex

import pytest

from agent.cli import build_parser as agent_parser
from kms.cli_help import subcommands
from kms.completion import HIDDEN
from server.cli import build_parser as server_parser

PROGRAMS = {"kms-agent": agent_parser, "kms-server": server_parser}
# The hidden subcommand the completion scripts call is no page anyone reads.
PAGES = [
    (prog, path) for prog, build in PROGRAMS.items() for path, _, _ in subcommands(build()) if path != HIDDEN
]


def _page(prog: str, path: str) -> argparse.ArgumentParser:
    return {p: sub for p, sub, _ in subcommands(PROGRAMS[prog]())}[path]


@pytest.mark.parametrize("prog, path", PAGES, ids=[f"{prog} {path}" for prog, path in PAGES])
def test_help_page(prog: str, path: str) -> None:
    page = _page(prog, path)
    text = page.format_help()
    assert page.description and page.description.strip(), "no description line"
    assert page.epilog and page.epilog.startswith("example:\n  "), "no example"
    example = page.epilog.split("\n")[1].strip()
    assert example.startswith(f"{prog} {path}"), example
    undocumented = [a.option_strings[0] if a.option_strings else a.dest for a in page._actions if not a.help]
    assert not undocumented, f"arguments without help: {undocumented}"
    # The example is a command the parser accepts (up to a shell redirection).
    words = shlex.split(example)
    words = words[: next((i for i, w in enumerate(words) if w in (">", "|")), len(words))]
    PROGRAMS[prog]().parse_args(words[1:])
    assert f"example:\n  {example}" in text  # kept on its line, not reflowed


def test_every_subcommand_is_walked() -> None:
    assert len([p for p in PAGES if p[0] == "kms-agent"]) >= 14
    assert len([p for p in PAGES if p[0] == "kms-server"]) >= 27
