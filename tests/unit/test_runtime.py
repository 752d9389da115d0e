"""The collector's tuning (cryptomon/runtime.py): start-up's objects frozen, the young generation larger,
cycles made afterwards still collected."""

import gc

from cryptomon.runtime import tune_gc


def test_tune_gc_freezes_start_up_and_still_collects_later_cycles():
    before = gc.get_threshold()
    try:
        tune_gc(young=1_000)
        assert gc.get_threshold() == (1_000, *before[1:])
        assert gc.get_freeze_count() > 1_000  # this process's modules and objects, out of the collector's sight

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after start-up: the collector's to free
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
