"""Faults of one symbol's order-book feed, injected on demand (POST /sim/inject?kind=<fault>&symbol=<S>):
what a client syncing by Binance's rules ("How to manage a local order book correctly") has to survive.

- `depth_drop`: the symbol's next diff is never sent (the one after it starts past the client's book: a gap);
- `depth_duplicate`: its next diff is sent twice;
- `depth_reorder`: its next diff is held and sent after the one that follows it;
- `depth_corrupt`: its next diff says a wrong quantity for the best bid (ids in order: only Binance's
  bookTicker can tell the book is wrong);
- `depth_old_snapshot`: the book as it is now is kept, and the next /api/v3/depth of the symbol answers it
  (older than any diff buffered by then, once the book has moved on);
- `depth_429`: the next /api/v3/depth of the symbol is answered 429 with `Retry-After`.

Pure: the engine asks what to send for each diff, the REST API what to answer a snapshot request with.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

DIFF_FAULTS = ("depth_drop", "depth_duplicate", "depth_reorder", "depth_corrupt")
SNAPSHOT_FAULTS = ("depth_old_snapshot", "depth_429")
DEPTH_FAULTS = DIFF_FAULTS + SNAPSHOT_FAULTS


class DepthFaults:
    """The depth faults armed per symbol, and those applied (`applied`, per fault)."""

    def __init__(self) -> None:
        self.pending: Counter[tuple[str, str]] = Counter()  # (fault, symbol) -> times still to apply
        self.applied: Counter[str] = Counter()
        self._held: dict[str, dict] = {}  # symbol -> a diff held back (depth_reorder)
        self._old: dict[str, list[dict]] = {}  # symbol -> snapshots kept to answer later (depth_old_snapshot)

    def arm(self, fault: str, symbol: str, count: int = 1, snapshot_now: dict | None = None) -> None:
        if fault not in DEPTH_FAULTS:
            raise ValueError(f"not a depth fault: {fault}")
        if fault == "depth_old_snapshot":
            if snapshot_now is None:
                raise ValueError("depth_old_snapshot keeps the book as it is now: give it")
            self._old.setdefault(symbol, []).extend([snapshot_now] * count)
        self.pending[(fault, symbol)] += count

    def _take(self, fault: str, symbol: str) -> bool:
        if self.pending[(fault, symbol)] <= 0:
            return False
        self.pending[(fault, symbol)] -= 1
        self.applied[fault] += 1
        return True

    def diffs_to_send(self, symbol: str, diff: dict, best_bid: list[str] | None = None) -> list[dict]:
        """The frames to send, in order, for the symbol's next diff (`best_bid`: the book's after it)."""
        held = self._held.pop(symbol, None)
        if held is not None:
            return [diff, held]
        if self._take("depth_drop", symbol):
            return []
        if self._take("depth_reorder", symbol):
            self._held[symbol] = diff
            return []
        if self._take("depth_duplicate", symbol):
            return [diff, diff]
        if best_bid is not None and self._take("depth_corrupt", symbol):
            price, qty = best_bid
            return [{**diff, "b": [*diff["b"], [price, f"{Decimal(qty) + 1:.8f}"]]}]
        return [diff]

    def refuse_snapshot(self, symbol: str) -> bool:
        """Answer this snapshot request 429?"""
        return self._take("depth_429", symbol)

    def old_snapshot(self, symbol: str) -> dict | None:
        """A snapshot kept earlier, to answer this request with (None: answer the book as it is)."""
        if not self._take("depth_old_snapshot", symbol):
            return None
        return self._old[symbol].pop(0)
