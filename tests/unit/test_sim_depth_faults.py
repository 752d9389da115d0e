"""The simulator's depth faults (pure): what is sent for a symbol's diffs, and answered to its snapshots."""

from __future__ import annotations

import pytest

from cryptomon.simulator.depth_faults import DepthFaults


def diffs(n: int, start: int = 1) -> list[dict]:
    return [{"U": i, "u": i} for i in range(start, start + n)]


def sent(faults: DepthFaults, symbol: str, payloads: list[dict]) -> list[int]:
    return [d["u"] for p in payloads for d in faults.diffs_to_send(symbol, p)]


def test_each_diff_fault_applies_once_to_its_symbol_only():
    f = DepthFaults()
    f.arm("depth_drop", "A")
    assert sent(f, "B", diffs(3)) == [1, 2, 3]  # another symbol: untouched
    assert sent(f, "A", diffs(3)) == [2, 3]
    f.arm("depth_duplicate", "A")
    assert sent(f, "A", diffs(2, 4)) == [4, 4, 5]
    f.arm("depth_reorder", "A")
    assert sent(f, "A", diffs(3, 6)) == [7, 6, 8]
    f.arm("depth_corrupt", "A")
    assert f.diffs_to_send("A", {"U": 9, "u": 9, "b": [["5", "1"]]}) == [{"U": 9, "u": 9, "b": [["5", "1"]]}]
    wrong = f.diffs_to_send("A", {"U": 10, "u": 10, "b": [["5", "1"]]}, best_bid=["5", "1"])
    assert wrong == [{"U": 10, "u": 10, "b": [["5", "1"], ["5", "2.00000000"]]}]  # the last one of a price counts
    assert dict(f.applied) == {"depth_drop": 1, "depth_duplicate": 1, "depth_reorder": 1, "depth_corrupt": 1}


def test_snapshot_faults_answer_the_next_request_of_the_symbol():
    f = DepthFaults()
    kept = {"lastUpdateId": 5, "bids": [["1", "1"]], "asks": [["2", "1"]]}
    f.arm("depth_old_snapshot", "A", snapshot_now=kept)
    f.arm("depth_429", "A")
    assert f.old_snapshot("B") is None and not f.refuse_snapshot("B")
    assert f.refuse_snapshot("A") and not f.refuse_snapshot("A")
    assert f.old_snapshot("A") == kept and f.old_snapshot("A") is None
    with pytest.raises(ValueError):
        f.arm("depth_old_snapshot", "A")  # it keeps the book as it is: without one, nothing to keep
    with pytest.raises(ValueError):
        f.arm("drop", "A")
