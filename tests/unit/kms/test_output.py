"""kms.output: one listing, plain for a pipe (stable, as before) and a table for a terminal."""

from __future__ import annotations

import pytest

from kms.output import Record, State, Table, When, plain, terminal, tone_of

NOW = 1_814_313_600  # 2027-06-30T00:00:00Z
AGENTS = Table(
    ["NAME", "NOT AFTER", "STATUS"],
    [["web-1", When(NOW + 3 * 86_400), State("valid")], ["db", When(NOW - 7200), State("revoked")]],
)


def test_piped_columns_are_aligned_plain_text_with_absolute_times() -> None:
    assert plain([AGENTS]) == (
        "NAME   NOT AFTER             STATUS\n"
        "web-1  2027-07-03T00:00:00Z  valid\n"
        "db     2027-06-29T22:00:00Z  revoked\n"
    )


def test_piped_lines_and_marks_are_the_commands_own() -> None:
    table = Table(["SEQ"], [["#1"]], lines=["#1 something happened"])
    record = Record("key app", [("expires", When(NOW, "2027 (SOON)"))], ["key app", "  expires: 2027 (SOON)"])
    assert plain([record, table]) == "key app\n  expires: 2027 (SOON)\n#1 something happened\n"
    assert plain([Table(["A", "B"], [[When(0), When(NOW, "x !MARK")]])]) == "A  B\n-  x !MARK\n"


def test_a_terminal_gets_headers_relative_times_and_colored_states() -> None:
    text = terminal([AGENTS], now=NOW, color=True, width=100)
    assert "NAME" in text and "STATUS" in text and "\x1b[1m" in text  # bold headers
    assert "in 3 d" in text and "2 h ago" in text
    assert "\x1b[32mvalid" in text and "\x1b[31mrevoked" in text


def test_without_color_a_terminal_gets_no_escape_codes() -> None:
    text = terminal([AGENTS, Record("t", [("state", State("held"))], ["t"])], now=NOW, color=False, width=100)
    assert "\x1b" not in text
    assert "in 3 d" in text and "held" in text


def test_a_narrow_terminal_never_cuts_a_serial_or_a_name_short() -> None:
    serial = "4f3a9c2e1b7d6a5f8e9c0b1a2d3e4f5a6b7c8d9e"  # 40 hex digits, as issued
    table = Table(
        ["NAME", "GROUPS", "SERIAL", "NOT AFTER", "STATUS"],
        [["payments-worker-17", "web,batch,billing", serial, When(NOW + 86_400), State("valid")]],
    )
    text = terminal([table], now=NOW, color=False, width=80)
    assert serial in text and "payments-worker-17" in text and "…" not in text, text


def test_cell_text_is_never_markup() -> None:
    text = terminal([Table(["NAME"], [["[bold]x[/bold]"]])], now=NOW, color=True, width=60)
    assert "[bold]x[/bold]" in text


@pytest.mark.parametrize(
    ("state", "tone"),
    [
        ("valid", "good"),
        ("active", "good"),
        ("revoked", "bad"),
        ("expired", "bad"),
        ("in force", "bad"),
        ("held", "warn"),
        ("disabled (suspected leak)", "warn"),
        ("not yet valid", "warn"),
        ("released by #4", "info"),
        ("something else", None),
        ("", None),
    ],
)
def test_states_have_the_tone_of_their_first_word(state: str, tone: str | None) -> None:
    assert tone_of(state) == tone
