"""server/cli/top_view.py: the panes fit the terminal, and a row says what the Overview says."""

from __future__ import annotations

import pytest

from kms.v1 import monitor_pb2
from server.cli.top_view import agent_lines, event_lines, layout_for, plain


@pytest.mark.parametrize("rows", [10, 24, 40, 80])
def test_the_panes_fit_the_terminal(rows: int) -> None:
    shape = layout_for(rows)
    # header 2, separator 1, filter 1, footer 1 around the two areas.
    assert 2 + shape.top + 1 + shape.events + 2 <= max(rows, 12)
    assert shape.agents == shape.top - 2 and shape.keys + shape.soon + 3 <= shape.top


def test_rows_read_as_the_overview_says() -> None:
    o = monitor_pb2.Overview(
        now=1000,
        agents_total=2,
        agents_matching=2,
        agents_online=1,
        agents=[
            monitor_pb2.AgentRow(name="web-1", open_streams=2, last_seen=940, not_after=4600, status="valid"),
            monitor_pb2.AgentRow(name="web-3", last_seen=940, not_after=900, status="expired"),
        ],
        events=[
            monitor_pb2.ObservedEvent(at=990, kind="revoke", subject="agent web-2", detail="keyCompromise")
        ],
    )
    lines = [plain(line) for line in agent_lines(o, 0, True, "web")]
    assert lines[0].startswith("▶ AGENTS") and "1-2 of 2 matching 'web' (1 online of 2)" in lines[0]
    assert lines[2].split() == ["web-1", "●", "2", "now", "in", "1h", "valid"]  # online: seen now
    assert lines[3].split() == ["web-3", "·", "1m", "ago", "1m", "ago", "expired"]
    (title, event) = [plain(line) for line in event_lines(o.events, False)]
    assert title.startswith("  EVENTS") and event.split()[1:] == ["revoke", "agent", "web-2", "keyCompromise"]
