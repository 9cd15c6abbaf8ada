"""kms/prompts.py without a terminal: the answers' parsing, and that nothing ever waits for input.

The questions themselves are typed in a real pty in tests/e2e/test_prompts_story.py.
"""

from __future__ import annotations

import io

import pytest

from kms import prompts
from kms.errors import InvalidArgument


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("typed", "answer"),
    [("y", True), ("YES", True), (" yes ", True), ("", False), ("n", False), ("No", False), ("maybe", None)],
)
def test_yes_no_answers_with_no_as_the_default(typed: str, answer: bool | None) -> None:
    assert prompts.parse_yes_no(typed) is answer


@pytest.mark.parametrize(("stdin_tty", "stdout_tty"), [(False, False), (True, False), (False, True)])
def test_interactive_only_when_stdin_and_stdout_are_terminals(
    monkeypatch: pytest.MonkeyPatch, stdin_tty: bool, stdout_tty: bool
) -> None:
    monkeypatch.setattr("sys.stdin", _Tty() if stdin_tty else io.StringIO())
    monkeypatch.setattr("sys.stdout", _Tty() if stdout_tty else io.StringIO())
    assert not prompts.is_interactive()
    with pytest.raises(prompts.NotInteractive):
        prompts.ask_text("name", what="--name")
    with pytest.raises(prompts.NotInteractive):
        prompts.ask_secret("token", what="--token")
    with pytest.raises(prompts.NotInteractive):
        prompts.ask_yes_no("sure?", what="--yes")
    with pytest.raises(prompts.NotInteractive, match="pass --yes"):
        prompts.confirm("it goes", yes=False, prog="kms-server key destroy")
    with pytest.raises(
        InvalidArgument, match=r"^the following arguments are required: --name \(see x --help\)$"
    ):
        prompts.value_or_ask(None, "name", flag="--name", prog="x")
    prompts.confirm("it goes", yes=True, prog="x")  # --yes never asks
    assert prompts.value_or_ask("given", "name", flag="--name", prog="x") == "given"


def _terminal(monkeypatch: pytest.MonkeyPatch, typed: str) -> io.StringIO:
    monkeypatch.setattr("sys.stdin", _Tty(typed))
    out = _Tty()
    monkeypatch.setattr("sys.stdout", out)
    return out


def test_confirm_asks_again_until_yes_or_no_and_says_what_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _terminal(monkeypatch, "perhaps\ny\n")
    prompts.confirm("key app version 1 will be erased", yes=False, prog="x")
    assert out.getvalue().count("[y/N]") == 2 and "key app version 1 will be erased" in out.getvalue()


@pytest.mark.parametrize("typed", ["\n", "n\n", ""], ids=["enter", "no", "end-of-input"])
def test_confirm_declined(monkeypatch: pytest.MonkeyPatch, typed: str) -> None:
    _terminal(monkeypatch, typed)
    with pytest.raises(prompts.Declined, match="nothing changed") as caught:
        prompts.confirm("it goes", yes=False, prog="x")
    assert caught.value.exit_code == 14


def test_ask_text_takes_the_default_and_refuses_end_of_input(monkeypatch: pytest.MonkeyPatch) -> None:
    _terminal(monkeypatch, "\n\nweb-1\n")
    assert prompts.ask_text("name", what="--name") == "web-1"  # empty answers asked again
    _terminal(monkeypatch, "\n")
    assert prompts.ask_text("groups", what="--group", optional=True) == ""
    _terminal(monkeypatch, "")
    with pytest.raises(InvalidArgument, match="--name is needed"):
        prompts.ask_text("name", what="--name")


def test_ask_secret_end_of_input_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _terminal(monkeypatch, "")

    def ctrl_d(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", ctrl_d)
    with pytest.raises(InvalidArgument, match="--token is needed"):
        prompts.ask_secret("join token", what="--token")
