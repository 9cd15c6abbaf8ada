"""Listings as people and as scripts read them: one model, two renderings.

A command describes what it lists once: a Table (rows under headers) or a Record (one object's
fields), whose cells are text, a State (a word such as valid or revoked, colored by what it
means) or a When (a time). ``plain`` renders it for a pipe: stable text, the aligned columns or
the lines each command has always printed, which scripts and tests read; times stay ISO 8601.
``terminal`` renders it for a person: rich draws an aligned table with bold headers, states in
color (unless told not to: NO_COLOR, --no-color) and times relative to now ("in 3 d", "2 h
ago"). rich is imported by ``terminal`` alone, so a piped command never loads it.

kms.cli.print_views decides which (is stdout a terminal, may it color) and prints the result.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from kms.times import iso, relative

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

__all__ = ["Cell", "Record", "State", "Table", "Tone", "View", "When", "plain", "terminal", "tone_of"]

Tone = Literal["good", "bad", "warn", "info"]

# Each tone's color on a terminal.
_STYLES: dict[Tone, str] = {"good": "green", "bad": "red", "warn": "yellow", "info": "cyan"}

# What the words our listings print mean, by their first word (agents' status, key and version
# states, revocation states, check's answer, audit outcomes).
_TONES: dict[str, Tone] = {
    **dict.fromkeys(("valid", "good", "active", "enabled", "ok", "intact"), "good"),
    **dict.fromkeys(
        ("revoked", "compromised", "destroyed", "destroyed_compromised", "expired", "denied", "refused",
         "failed", "in", "broken"),
        "bad",
    ),
    **dict.fromkeys(("held", "disabled", "deactivated", "superseded", "expires", "not", "unknown"), "warn"),
    **dict.fromkeys(("released",), "info"),
}  # fmt: skip


def tone_of(text: str) -> Tone | None:
    """The tone of a state as printed, by its first word: 'disabled (leak)' is a warning, 'in force' bad."""
    words = text.replace("(", " ").replace(":", " ").split()
    return _TONES.get(words[0].lower()) if words else None


@dataclass(frozen=True)
class State:
    """A state word, colored on a terminal by its tone (tone_of its text unless given)."""

    text: str
    tone: Tone | None = None


@dataclass(frozen=True)
class When:
    """A time in Unix seconds (0: none, shown as '-'). Piped: ISO 8601, or ``text`` when given (a
    listing's own marks, such as '!EXPIRES-SOON'); on a terminal: relative to now, in its tone."""

    at: int
    text: str | None = None
    tone: Tone | None = None


Cell: TypeAlias = "str | State | When"


@dataclass(frozen=True)
class Table:
    """Rows under headers. ``lines``: what a pipe gets instead of aligned columns (a format scripts
    already read, one line per row); None: the columns, aligned with two spaces, as plain text."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    lines: Sequence[str] | None = None


@dataclass(frozen=True)
class Record:
    """One object's fields (a status page): a title, then label and value per line. ``lines``: what a
    pipe gets (the page as it has always been printed)."""

    title: str | None
    fields: Sequence[tuple[str, Cell]]
    lines: Sequence[str]


View: TypeAlias = "Table | Record"


def _plain_cell(cell: Cell) -> str:
    if isinstance(cell, State):
        return cell.text
    if isinstance(cell, When):
        return cell.text if cell.text is not None else (iso(cell.at) if cell.at else "-")
    return cell


def _columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]


def plain(views: Sequence[View]) -> str:
    """The text a pipe gets: stable from one run to the next (no color, absolute times)."""
    lines: list[str] = []
    for view in views:
        if view.lines is not None:
            lines += view.lines
        else:
            assert isinstance(view, Table)  # a Record always has its lines
            lines += _columns(view.headers, [[_plain_cell(c) for c in row] for row in view.rows])
    return "".join(f"{line}\n" for line in lines)


def _text(cell: Cell, now: int) -> Text:
    from rich.text import Text

    if isinstance(cell, State):
        tone = cell.tone or tone_of(cell.text)
        return Text(cell.text, style=_STYLES[tone] if tone else "")
    if isinstance(cell, When):
        shown = relative(cell.at, now) if cell.at else "-"
        return Text(shown, style=_STYLES[cell.tone] if cell.tone else "")
    return Text(cell)


def _rich_view(view: View, now: int) -> RenderableType:
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    if isinstance(view, Table):
        table = RichTable(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
        for i, header in enumerate(view.headers):
            # Names and serials are copied into the next command: never cut short with an
            # ellipsis (columns of words wrap instead, and a word too long for its column folds).
            widest = max(
                (len(c) for c in (row[i] for row in view.rows) if isinstance(c, str) and " " not in c),
                default=0,
            )
            table.add_column(header, overflow="fold", min_width=min(widest, 40) or None)
        for row in view.rows:
            table.add_row(*(_text(cell, now) for cell in row))
        return table
    grid = RichTable.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, cell in view.fields:
        grid.add_row(label, _text(cell, now))
    return Group(Text(view.title, style="bold"), grid) if view.title else grid


def terminal(views: Sequence[View], *, now: int, color: bool, width: int) -> str:
    """The text a person at a terminal gets: aligned tables with headers, times relative to now, and,
    with color, bold headers and states in their tone (without: no escape codes at all)."""
    from rich.console import Console

    out = io.StringIO()
    console = Console(
        file=out,
        width=10_000,  # each view gets its own width below
        force_terminal=True,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    for view in views:
        console.print(_rich_view(view, now))
    return out.getvalue()
