"""What each pane of `kms-server top` shows, as lines of styled text: plain functions of one Overview.

No prompt_toolkit here (it is loaded only when the screen opens, server/cli/top_screen.py):
a line is a list of (style, text) fragments, which prompt_toolkit draws as they are and
`top --once` prints without their styles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kms.sparkline import span, sparkline
from kms.times import iso
from kms.v1 import monitor_pb2

__all__ = [
    "PANES",
    "Layout",
    "Line",
    "agent_lines",
    "event_lines",
    "header_lines",
    "key_lines",
    "layout_for",
    "plain",
]

Line = list[tuple[str, str]]
PANES = ("agents", "keys", "events")
_STATUS = {
    "valid": "ansigreen",
    "revoked": "ansired bold",
    "expired": "ansiyellow",
    "not yet valid": "ansiyellow",
}
_KIND = {"revoke": "ansired bold", "compromise": "ansired bold", "hold": "ansiyellow", "enroll": "ansigreen"}


@dataclass(frozen=True)
class Layout:
    """The rows each pane shows on a terminal of a given size (what the client asks the server for)."""

    top: int  # the agents and keys panes' height, title and header included
    agents: int
    keys: int
    soon: int
    events: int


def layout_for(rows: int) -> Layout:
    """Header (2 lines), footer (1) and the filter line (1) aside: two thirds above, a third of events."""
    body = max(rows - 4, 8)
    top = max(body * 2 // 3, 5)
    events = max(body - top - 1, 1)
    agents = max(top - 2, 1)
    keys = max((top - 3) // 2, 1)
    return Layout(top, agents, keys, max(top - 3 - keys - 1, 1), events)


def plain(line: Line) -> str:
    return "".join(text for _, text in line)


def _until(at: int, now: int) -> str:
    if not at:
        return "-"
    return f"in {span(at - now)}" if at > now else f"{span(now - at)} ago"


def _title(name: str, focused: bool, counts: str) -> Line:
    marker = "▶ " if focused else "  "
    return [("reverse bold" if focused else "bold", f"{marker}{name.upper()}"), ("", f"  {counts}")]


def header_lines(o: monitor_pb2.Overview, where: str, width: int) -> list[Line]:
    """The title, totals and clock; then each rate's sparkline and its last value."""
    first: Line = [
        ("bold", "kms-server top"),
        (
            "",
            f"  {where}  agents {o.agents_total} ({o.agents_online} online)  keys {o.keys_total}  {iso(o.now)}",
        ),
    ]
    spark = max((width - 60) // 3, 8)
    second: Line = []
    for label, series in (
        ("RPC/s", o.rpc_rate),
        ("releases/s", o.release_rate),
        ("enrollments/s", o.enrollment_rate),
    ):
        last = series[-1] if series else 0.0
        # Grows from the label as seconds go by (no history is drawn as none), newest rightmost.
        line = sparkline(list(series), min(len(series), spark)).ljust(spark)
        second += [("", f"{label} {last:6.1f} "), ("ansicyan", line), ("", "   ")]
    return [first, second]


def agent_lines(o: monitor_pb2.Overview, offset: int, focused: bool, filter_text: str) -> list[Line]:
    shown = f"{offset + 1}-{offset + len(o.agents)}" if o.agents else "0"
    where = f" matching '{filter_text}'" if filter_text else ""
    counts = f"{shown} of {o.agents_matching}{where} ({o.agents_online} online of {o.agents_total})"
    lines = [
        _title("agents", focused, counts),
        [("underline", f"{'NAME':<28} {'ONLINE':<8} {'SEEN':>8} {'CERT ENDS':>10}  STATUS")],
    ]
    for a in o.agents:
        online = f"● {a.open_streams}" if a.open_streams else "·"
        seen = "now" if a.open_streams else _until(a.last_seen, o.now) if a.last_seen else "-"
        lines.append(
            [
                ("", f"{a.name[:28]:<28} "),
                ("ansigreen" if a.open_streams else "", f"{online:<8} "),
                ("", f"{seen:>8} {_until(a.not_after, o.now):>10}  "),
                (_STATUS.get(a.status, ""), a.status),
            ]
        )
    return lines


def key_lines(o: monitor_pb2.Overview, offset: int, focused: bool) -> list[Line]:
    shown = f"{offset + 1}-{offset + len(o.keys)}" if o.keys else "0"
    lines = [
        _title("keys", focused, f"{shown} of {o.keys_matching} (of {o.keys_total})"),
        [("underline", f"{'NAME':<20} {'TYPE':<8} {'VER':>4} {'EXPIRES':>9} {'ROTATES':>9}")],
    ]
    for k in o.keys:
        state = [("ansiyellow", " disabled")] if k.disabled else []
        lines.append(
            [
                ("", f"{k.name[:20]:<20} {k.key_type:<8} {'v' + str(k.current_version):>4} "),
                ("", f"{_until(k.expires_at, o.now):>9} {_until(k.rotation_due_at, o.now):>9}"),
                *state,
            ]
        )
    lines.append([("bold", "  SOON"), ("", "  expiries and rotations")])
    lines += [[("", f"{_until(s.at, o.now):>9}  {s.what:<20} {s.name}")] for s in o.soon]
    return lines


def event_lines(events: Sequence[monitor_pb2.ObservedEvent], focused: bool) -> list[Line]:
    lines = [_title("events", focused, "newest first")]
    for e in events:
        clock = iso(e.at)[11:19]
        lines.append(
            [
                ("", f"{clock}  "),
                (_KIND.get(e.kind, "ansicyan"), f"{e.kind:<10}"),
                ("", f" {e.subject}  "),
                ("ansibrightblack", e.detail),
            ]
        )
    return lines
