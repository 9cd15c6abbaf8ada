"""kms/shell.py without a terminal: what the completer offers, which lines stay out of the history,
when a bare command line opens the shell, and how a menu's answers become a command line."""

from __future__ import annotations

from pathlib import Path

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from kms.menu import Ask, Task, answers_to_args, only_options
from kms.shell import ParserCompleter, SecretFreeHistory, has_secret
from server.cli import build_parser
from server.cli.complete import rule

TOKEN = "0123456789abcdef." + "A" * 43
NAMES = {"keys": ["payroll-db", "billing"], "agents": ["web-1"], "versions": ["1", "2"]}


def _offered(text: str) -> list[str]:
    completer = ParserCompleter(build_parser(), rule, lambda kind, words: NAMES.get(kind, []))
    return [
        c.text for c in completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    ]


def test_the_completer_offers_commands_flags_choices_and_live_names() -> None:
    assert _offered("ke") == ["key"]
    assert "menu" in _offered("") and "shell" not in _offered("") and "__complete" not in _offered("")
    assert _offered("key show pay") == ["payroll-db"]
    assert _offered("key create ") == []  # a new name: nothing to offer
    assert _offered("key destroy payroll-db --version ") == ["1", "2"]
    assert _offered("key create x --type ec") == ["ec-p256"]
    assert "--reason" in _offered("revoke agent web-1 --")
    assert _offered("revoke agent ") == ["web-1"]
    assert _offered("help key sh") == ["show"]


def test_lines_with_a_secret_never_reach_the_history_file(tmp_path: Path) -> None:
    assert has_secret(f"enroll --token {TOKEN}") and has_secret("enroll --token=x")
    assert has_secret(f"check --serial {TOKEN}")  # a token pasted anywhere
    assert has_secret("fetch-key app --include-key --json")
    # Cut short (the parsers refuse it, but the line was typed with what followed).
    assert (
        has_secret("enroll --tok abc")
        and has_secret("enroll --to=abc")
        and has_secret("fetch-key k --include")
    )
    assert not has_secret("verify --key app f s") and not has_secret("watch --timeout 5")
    assert not has_secret("key show app") and not has_secret("token create --name web-1")
    history = SecretFreeHistory(str(tmp_path / "h"))
    history.store_string("key list")
    history.store_string(f"enroll --token {TOKEN}")
    text = (tmp_path / "h").read_text()
    assert "key list" in text and TOKEN not in text


def test_only_the_programs_own_options_open_the_shell() -> None:
    parser = build_parser()
    assert only_options(parser, []) and only_options(parser, ["--data-dir", "/d", "--verbose"])
    assert only_options(parser, ["--data-dir=/d"])
    assert not only_options(parser, ["key", "list"]) and not only_options(parser, ["--help"])
    assert not only_options(parser, ["--nonsense"])


def test_menu_answers_become_the_command_line() -> None:
    task = Task(
        "create", ("key", "create"), (Ask("name"), Ask("grants", "--grant", several=True, required=False))
    )
    assert answers_to_args(task, ["app", "group:web, agent:db-1"]) == [
        "key",
        "create",
        "app",
        "--grant",
        "group:web",
        "--grant",
        "agent:db-1",
    ]
    assert answers_to_args(task, ["app", ""]) == ["key", "create", "app"]
