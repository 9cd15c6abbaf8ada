"""kms/sparkline.py: blocks scaled to the largest value, padded on the left; spans in one unit."""

from __future__ import annotations

import pytest

from kms.sparkline import BLOCKS, span, sparkline


@pytest.mark.parametrize(
    ("values", "width", "expected"),
    [
        pytest.param([], 4, "    ", id="no-history-yet"),
        pytest.param([0, 0, 0], 3, "▁▁▁", id="all-quiet"),
        pytest.param([0, 7], 2, "▁█", id="zero-and-top"),
        pytest.param([1, 2, 3, 4, 5, 6, 7], 7, "▂▃▄▅▆▇█", id="ramp"),
        pytest.param([5, 10], 4, "  ▅█", id="padded-left"),
        pytest.param([99, 1, 1], 2, "██", id="only-the-last-width-count"),
        pytest.param([float("nan"), -3, float("inf"), 2], 4, "▁▁▁█", id="not-finite-or-negative-is-zero"),
        pytest.param([1, 2], 0, "", id="no-room"),
    ],
)
def test_sparkline(values: list[float], width: int, expected: str) -> None:
    assert sparkline(values, width) == expected
    assert len(sparkline(values, width)) == max(width, 0)


def test_sparkline_uses_only_block_characters() -> None:
    assert set(sparkline([i * 0.37 for i in range(50)], 50)) <= set(BLOCKS)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "now"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (7200, "2h"),
        (86400 * 3 + 5, "3d"),
        (-90, "1m"),
    ],
)
def test_span(seconds: int, expected: str) -> None:
    assert span(seconds) == expected
