"""Questions on a terminal, for both command lines: text, a hidden secret, yes or no.

A question is asked only when stdin and stdout are both terminals: in a pipe,
a script or a service nothing ever waits for an answer, and each function
raises NotInteractive instead (exit 2, one line), so a command fails as it
would without the prompt. ``confirm`` is the one gate before an irreversible
action: ``--yes`` skips it, a terminal is asked with No as the default, and
anything else is refused with a line that names ``--yes``.

The answer's parsing (``parse_yes_no``) is a pure function, tested alone.
"""

from __future__ import annotations

import getpass
import sys
from typing import ClassVar

from kms.errors import InvalidArgument, KmsError

__all__ = [
    "Declined",
    "NotInteractive",
    "ask_secret",
    "ask_text",
    "ask_yes_no",
    "confirm",
    "is_interactive",
    "parse_yes_no",
    "value_or_ask",
]


class NotInteractive(InvalidArgument):
    """A question was needed, but stdin or stdout is not a terminal."""


class Declined(KmsError):
    """The operator answered No (or nothing) to a confirmation: nothing was done.

    Its own exit code (every KmsError class has one): a person answered, and a script
    never gets here (without a terminal the refusal is NotInteractive, exit 2).
    """

    exit_code = 14
    reason: ClassVar[str] = "declined"


def is_interactive() -> bool:
    """True when a person can answer: stdin AND stdout are terminals."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _require_terminal(what: str) -> None:
    if not is_interactive():
        raise NotInteractive(f"{what} is needed, and without a terminal (stdin and stdout) nothing is asked")


def _read_line(prompt: str) -> str | None:
    """One line typed after the prompt; None at the end of input (Ctrl-D)."""
    print(prompt, end="", flush=True)
    line = sys.stdin.readline()
    if not line:
        print()
        return None
    return line.strip()


def ask_text(question: str, *, what: str, default: str = "", optional: bool = False) -> str:
    """Asks until a non-empty answer is typed (an empty one is the default, or '' if optional).

    Args:
        what: how the missing value is named when there is no terminal to ask on, e.g. "--name".
    """
    _require_terminal(what)
    suffix = f" [{default}]" if default else ""
    while True:
        line = _read_line(f"{question}{suffix}: ")
        if line is None:
            raise InvalidArgument(f"{what} is needed: nothing was typed")
        if line or default or optional:
            return line or default


def value_or_ask(value: str | None, question: str, *, flag: str, prog: str) -> str:
    """A required value given on the command line, else asked on a terminal.

    Without a terminal the error is argparse's own for a missing argument, word for
    word, so a script sees what it saw before the question existed.
    """
    if value:
        return value
    if not is_interactive():
        raise NotInteractive(f"the following arguments are required: {flag} (see {prog} --help)")
    return ask_text(question, what=flag)


def ask_secret(question: str, *, what: str) -> str:
    """Asks with hidden input (nothing is echoed); an empty answer is refused."""
    _require_terminal(what)
    try:
        answer = getpass.getpass(f"{question}: ").strip()
    except EOFError:  # Ctrl-D
        answer = ""
    if not answer:
        raise InvalidArgument(f"{what} is needed: nothing was typed")
    return answer


def parse_yes_no(text: str) -> bool | None:
    """'y'/'yes' is True, 'n'/'no' or an empty answer (the default) is False, anything else None."""
    answer = text.strip().lower()
    if answer in ("y", "yes"):
        return True
    if answer in ("", "n", "no"):
        return False
    return None


def ask_yes_no(question: str, *, what: str) -> bool:
    """Asks '[y/N]' until the answer is yes or no; an empty answer or end of input is No."""
    _require_terminal(what)
    while True:
        line = _read_line(f"{question} [y/N] ")
        answer = False if line is None else parse_yes_no(line)
        if answer is not None:
            return answer
        print("please answer y or n")


def confirm(summary: str, *, yes: bool, prog: str) -> None:
    """The gate before an irreversible action.

    With ``yes`` it returns at once. On a terminal it prints the summary (what will
    happen) and asks, No by default. Otherwise it refuses.

    Raises:
        NotInteractive: no terminal and no --yes (exit 2, naming --yes).
        Declined: the answer was No (exit 14): nothing was done.
    """
    if yes:
        return
    if not is_interactive():
        raise NotInteractive(
            f"{prog} cannot be undone, and without a terminal (stdin and stdout) to confirm it on"
            " it is not done: pass --yes to do it"
        )
    print(summary, flush=True)
    if not ask_yes_no("Proceed?", what="--yes"):
        raise Declined("not confirmed: nothing changed")
