"""Sparklines and short spans of time, as `kms-server top` draws them: pure text, unit-tested.

A sparkline is one character per value, the eight Unicode lower blocks
(U+2581..U+2588) scaled to the largest value shown, so a busy second and a
quiet one read at a glance; a span is the shortest honest word for a
duration ("now", "42s", "5m", "3h", "12d").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["BLOCKS", "sparkline", "span"]

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values, one block each, right-aligned in width characters.

    Zero (or less) is the lowest block, the largest value the highest; values
    that are not finite count as zero. Fewer values than width are padded on the
    left with spaces (no history yet), so the newest value is always rightmost.
    """
    if width <= 0:
        return ""
    shown = [v if math.isfinite(v) and v > 0 else 0.0 for v in values[-width:]]
    top = max(shown, default=0.0)
    if top <= 0:
        line = BLOCKS[0] * len(shown)
    else:
        last = len(BLOCKS) - 1
        line = "".join(BLOCKS[min(last, math.ceil(v / top * last))] for v in shown)
    return line.rjust(width)


def span(seconds: int) -> str:
    """A duration in its largest whole unit: "now" under a second, then s, m, h, d."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return "now"
