"""Both command lines' parsers, walked subcommand by subcommand: each option appears under the commands
it applies to, and nowhere else (issue 17 §5)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from agent.cli import build_parser as agent_parser
from server.cli import build_parser as server_parser


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable subcommand, as ("key create", its parser)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, (*path, name))


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


# The commands that may renew this agent's certificate first, or keep it renewed (run).
RENEWING = {
    "run", "status", "keys", "fetch-key", "public-key", "encrypt", "decrypt", "watch", "exchange", "listen", "sign", "verify",
}  # fmt: skip


def test_agent_renew_fraction_only_where_it_applies() -> None:
    parser = agent_parser()
    assert "--renew-fraction" not in flags(parser)
    found = {name for name, sub in leaves(parser) if "--renew-fraction" in flags(sub)}
    assert found == RENEWING


@pytest.mark.parametrize("option", ["--dir", "--timeout", "--config", "--log-format", "--verbose"])
def test_agent_global_options_everywhere(option: str) -> None:
    parser = agent_parser()
    assert option in flags(parser)
    assert all(option in flags(sub) for _, sub in leaves(parser))


def test_server_options() -> None:
    parser = server_parser()
    commands = dict(leaves(parser))
    for name, sub in commands.items():
        assert {"--data-dir", "--config", "--verbose"} <= flags(sub), name  # every command finds its data dir
        # The daemon's settings only where the whole config is read.
        assert ("--listen" in flags(sub)) == (name in {"run", "init", "config show"}), name
    assert "--listen" not in flags(parser)


# The commands that list or report a status: each takes --json and --no-color (issue 17 §5).
LISTINGS = {
    "kms-server": {
        "agents list",
        "key list",
        "key show",
        "revocations list",
        "audit list",
        "audit verify",
        "ca status",
    },
    "kms-agent": {"status", "keys", "check"},
}


@pytest.mark.parametrize("program", sorted(LISTINGS))
def test_listings_take_json_and_no_color(program: str) -> None:
    parser = server_parser() if program == "kms-server" else agent_parser()
    assert "--no-color" in flags(parser)  # before the subcommand too
    commands = dict(leaves(parser))
    assert {name for name, sub in commands.items() if "--no-color" in flags(sub)} == LISTINGS[program]
    assert all("--json" in flags(commands[name]) for name in LISTINGS[program])
