"""server/heap: frozen objects escape full collections; a reclaim collects cycles that died frozen."""

from __future__ import annotations

import gc
import weakref

from server.ops.heap import GROWTH_CHECK_TICKS, RECLAIM_FLOOR, YOUNG_THRESHOLD, HeapKeeper


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


def test_a_doubled_frozen_set_is_noticed_at_the_next_growth_check() -> None:
    keeper = HeapKeeper(reclaim_every=3600)
    try:
        keeper.reclaim()
        grown = [[] for _ in range(2 * max(RECLAIM_FLOOR, gc.get_freeze_count()))]
        node = _Node()
        ref = weakref.ref(node)
        gc.freeze()  # what the ticks froze meanwhile, say
        del node
        for _ in range(GROWTH_CHECK_TICKS - 1):  # the size is not looked at on these ticks
            keeper.tick()
        assert ref() is not None
        keeper.tick()
        assert ref() is None and grown  # doubled: unfrozen and collected
    finally:
        gc.unfreeze()


def test_young_collections_are_spaced_out_and_the_older_pace_kept() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's default, whatever the test run set
        young = gc.get_stats()[0]["collections"]
        held = [[] for _ in range(5_000)]  # a burst of live containers: calls in flight, say
        assert gc.get_stats()[0]["collections"] - young >= 5  # the default walks them again and again
        HeapKeeper.space_young_collections()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
        young = gc.get_stats()[0]["collections"]
        held += [[] for _ in range(5_000)]
        assert gc.get_stats()[0]["collections"] - young <= 1  # at most the one already due
        assert len(held) == 10_000
    finally:
        gc.set_threshold(*before)
