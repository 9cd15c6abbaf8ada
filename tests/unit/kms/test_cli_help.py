"""kms/cli_help.py: --version from the package metadata; usage errors name the subcommand's help."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from agent.cli import build_parser as agent_parser
from kms.cli import ArgumentParser
from kms.cli_help import program_version
from kms.errors import InvalidArgument
from server.cli import build_parser as server_parser


def test_version_is_the_installed_package_version() -> None:
    assert program_version("kms-agent") == f"kms-agent {version('seed-kms')}"


@pytest.mark.parametrize("prog, build", [("kms-agent", agent_parser), ("kms-server", server_parser)])
def test_dash_dash_version_prints_it_on_stdout_and_exits_0(
    prog: str, build: object, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build().parse_args(["--version"])  # type: ignore[operator]
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert out == f"{prog} {version('seed-kms')}\n" and err == ""


def _tree() -> ArgumentParser:
    parser = ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command", required=True)
    key = sub.add_parser("key").add_subparsers(dest="key_command", required=True)
    key.add_parser("create").add_argument("name")
    sub.add_parser("check").add_argument("--serial")
    return parser


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["check", "--bogus"], "see tool check --help"),
        (["check", "--serial", "1", "extra"], "see tool check --help"),
        (["key", "create", "k", "--bogus"], "see tool key create --help"),
        (["key", "nope"], "see tool key --help"),
    ],
)
def test_unrecognized_arguments_point_to_the_subcommand_help(argv: list[str], hint: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _tree().parse_args(argv)
    assert info.value.message.endswith(f"({hint})"), info.value.message


def test_a_later_parse_starts_afresh() -> None:
    parser = _tree()
    parser.parse_args(["key", "create", "k"])
    with pytest.raises(InvalidArgument, match=r"\(see tool check --help\)$"):
        parser.parse_args(["check", "x"])


@pytest.mark.parametrize(
    "build, argv, hint",
    [
        (agent_parser, ["check", "--serial", "1f", "--bogus"], "see kms-agent check --help"),
        (agent_parser, ["fetch-key", "app", "extra"], "see kms-agent fetch-key --help"),
        (server_parser, ["key", "create", "app", "--bogus"], "see kms-server key create --help"),
        (server_parser, ["revocations", "list", "x"], "see kms-server revocations list --help"),
    ],
)
def test_both_programs(build, argv: list[str], hint: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as info:
        build().parse_args(argv)
    assert info.value.message == f"unrecognized arguments: {argv[-1]} ({hint})"
