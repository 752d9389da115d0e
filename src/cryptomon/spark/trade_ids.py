"""Which trade ids a metric window has counted, as sorted disjoint ranges of ids (inclusive).

Binance numbers each symbol's trades 1, 2, 3, ...: what a window has counted is one range of ids that
grows with every micro-batch, plus one more per gap that a backfill has not filled yet. A trade of the
window whose id is in a range is a duplicate (Kafka holding it twice, at two offsets) and is not counted
again; one in no range is new, however late it comes (pure).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

Range = tuple[int, int]  # first id, last id, both counted
MAX_RANGES = 1_000  # per window: the lowest go first (a window's trades are one run but for gaps)


def overlaps(ranges: list[Range], first: int, last: int) -> bool:
    """Whether any id in first..last is in `ranges`."""
    i = bisect_right(ranges, (first, last)) - 1  # the last range starting at or before `first`
    if i >= 0 and ranges[i][1] >= first:
        return True
    return i + 1 < len(ranges) and ranges[i + 1][0] <= last


def contains(ranges: list[Range], trade_id: int) -> bool:
    return overlaps(ranges, trade_id, trade_id)


def runs(ids: Iterable[int]) -> list[Range]:
    """Sorted distinct ids -> the ranges of consecutive ones."""
    out: list[Range] = []
    for i in ids:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        elif not out or i > out[-1][1]:
            out.append((i, i))
    return out


def add(ranges: list[Range], new: Iterable[Range]) -> list[Range]:
    """The union, with touching ranges merged, cut to the MAX_RANGES highest."""
    out: list[Range] = []
    for first, last in sorted([*ranges, *new]):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out[-MAX_RANGES:]
