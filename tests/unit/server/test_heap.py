"""server/heap: frozen objects escape full collections; a reclaim collects cycles that died frozen."""

from __future__ import annotations

import gc
import weakref

from server.ops.heap import HeapKeeper


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_freeze_hides_long_lived_objects_and_reclaim_collects_what_died_frozen() -> None:
    keeper = HeapKeeper(reclaim_every=3600)
    try:
        keeper.reclaim()
        node = _Node()
        ref = weakref.ref(node)
        keeper.tick()  # frozen: full collections no longer scan it
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None, "a frozen cycle was collected: freezing did nothing"
        pause = keeper.reclaim()
        assert ref() is None and pause >= 0
    finally:
        gc.unfreeze()


def test_tick_reclaims_when_due() -> None:
    keeper = HeapKeeper(reclaim_every=0)  # always due
    try:
        node = _Node()
        ref = weakref.ref(node)
        gc.freeze()
        del node
        keeper.tick()
        assert ref() is None
    finally:
        gc.unfreeze()
