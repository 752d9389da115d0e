"""Consecutive trade and aggTrade ids per symbol, pure: what is new, a duplicate or a late gap filler, and
which ranges are still missing (the backfill's work list)."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NEW, DUPLICATE, LATE = "new", "duplicate", "late"


@dataclass
class _Seq:
    last: int
    # missing ids as sorted, disjoint, inclusive [start, end] intervals, with the time each was found
    gaps: list[list[int]] = field(default_factory=list)
    found_at: dict[int, float] = field(default_factory=dict)  # gap start -> monotonic time found
    resumed: bool = False  # `last` comes from a previous run (read back from Kafka), not from this stream


class SequenceTracker:
    """Per (symbol, kind) consecutive-id tracking for trade (`t`) and aggTrade (`a`) ids.

    observe() says whether an id is new, a duplicate (drop it) or a late arrival that fills a gap.
    Gaps (ids skipped by the stream) stay pending until filled by late arrivals or a backfill.
    """

    def __init__(self, max_resume_gap: int = 1_000_000) -> None:
        self._seqs: dict[tuple[str, str], _Seq] = {}
        self.max_resume_gap = max_resume_gap
        self.gaps_found = 0
        self.ids_missed = 0
        self.baseline_resets = 0
        self.resume_ids_skipped = 0  # ids between a previous run and this one too many to backfill

    def last(self, key: tuple[str, str]) -> int | None:
        s = self._seqs.get(key)
        return s.last if s else None

    def seed(self, key: tuple[str, str], last: int, gaps: list[list[int]] | None = None) -> None:
        """Start from a known last id (recovered from a previous run) instead of the first one seen: the ids
        between it and the first one seen become a gap to backfill, as do the previous run's open `gaps`."""
        s = self._seqs.setdefault(key, _Seq(last, resumed=True))
        for start, end in sorted(gaps or []):
            if start <= end <= last and not any(g[0] <= end and start <= g[1] for g in s.gaps):
                s.gaps.append([start, end])
                s.found_at[start] = 0.0  # due at once
                self.ids_missed += end - start + 1
        s.gaps.sort()

    def state(self) -> dict[tuple[str, str], tuple[int, list[list[int]]]]:
        """Where each stream stands: its last id and its open gaps (copies)."""
        return {key: (s.last, [list(g) for g in s.gaps]) for key, s in self._seqs.items()}

    def observe(self, key: tuple[str, str], seq: int, now: float = 0.0) -> str:
        s = self._seqs.get(key)
        if s is None:
            self._seqs[key] = _Seq(seq)
            return NEW
        if s.resumed:
            s.resumed = False
            if seq <= s.last or seq - s.last - 1 > self.max_resume_gap:
                # a fresh connection streams only new trades: ids at or below the previous run's last one
                # mean they started over (a restarted simulator, another exchange); a gap beyond the limit
                # is another exchange or a downtime too long to backfill
                if seq > s.last:
                    self.resume_ids_skipped += seq - s.last - 1
                log.warning(
                    "%s %s: first id %d after %d in the previous run: %s",
                    key[0],
                    key[1],
                    seq,
                    s.last,
                    "ids started over, not resuming"
                    if seq <= s.last
                    else f"{seq - s.last - 1} ids missed, more than CRYPTOMON_RESUME_MAX_GAP: not backfilled",
                )
                self.baseline_resets += 1
                self._seqs[key] = _Seq(seq)
                return NEW
        if seq == s.last + 1:
            s.last = seq
            return NEW
        if seq > s.last:
            s.gaps.append([s.last + 1, seq - 1])
            s.found_at[s.last + 1] = now
            self.gaps_found += 1
            self.ids_missed += seq - 1 - s.last
            s.last = seq
            return NEW
        return LATE if self._take(s, seq) else DUPLICATE

    def _take(self, s: _Seq, seq: int) -> bool:
        """Remove seq from the pending gaps; True if it was missing."""
        i = bisect_right(s.gaps, [seq, float("inf")]) - 1
        if i < 0:
            return False
        start, end = s.gaps[i]
        if not start <= seq <= end:
            return False
        found = s.found_at.pop(start, 0.0)
        pieces = [p for p in ([start, seq - 1], [seq + 1, end]) if p[0] <= p[1]]
        s.gaps[i : i + 1] = pieces
        for p in pieces:
            s.found_at[p[0]] = found
        return True

    def fill(self, key: tuple[str, str], seq: int) -> bool:
        s = self._seqs.get(key)
        return s is not None and self._take(s, seq)

    def drop_gap(self, key: tuple[str, str], start: int, end: int) -> int:
        """Give up on [start, end] (cannot be filled); returns how many ids were still missing."""
        s = self._seqs[key]
        dropped = 0
        kept = []
        for g in s.gaps:
            lo, hi = max(g[0], start), min(g[1], end)
            if lo > hi:
                kept.append(g)
                continue
            dropped += hi - lo + 1
            found = s.found_at.pop(g[0], 0.0)
            for p in ([g[0], lo - 1], [hi + 1, g[1]]):
                if p[0] <= p[1]:
                    kept.append(p)
                    s.found_at[p[0]] = found
        s.gaps = sorted(kept)
        return dropped

    def pending(self, older_than: float | None = None) -> list[tuple[tuple[str, str], int, int]]:
        """Pending gaps as (key, start, end), optionally only those found before `older_than`."""
        out = []
        for key, s in self._seqs.items():
            for start, end in s.gaps:
                if older_than is None or s.found_at.get(start, 0.0) <= older_than:
                    out.append((key, start, end))
        return out

    def found_at(self, key: tuple[str, str], start: int) -> float:
        """When the gap starting at `start` was found (monotonic), 0.0 if unknown."""
        s = self._seqs.get(key)
        return s.found_at.get(start, 0.0) if s else 0.0

    def missing_count(self) -> int:
        return sum(end - start + 1 for _, start, end in self.pending())


# how long a bookTicker id is remembered: a rotation's overlap (connection.py: the replacement delivers its
# first frame, then the old connection is closed and drained) lasts well under a second; ten allow a lagging
# process. Bounded by time, a quiet symbol holds a few ids: 4,096 ids for each of 400 symbols took 130 MiB
# of the ingestion (bench/ingest_heap.py, 2026-12-02), most of its growth in the market runs.
RECENT_BOOK_MS = 10_000


class RecentIds:
    """The ids a stream delivered in the last `window_ms` (at most `size` of them), to drop exact duplicates
    of bookTicker updates."""

    def __init__(self, size: int = 4096, window_ms: int = RECENT_BOOK_MS):
        self.size, self.window_ms = size, window_ms
        self._order: deque[int] = deque()
        self._times: deque[int] = deque()  # the ingestion time (ms) each id of _order was seen at
        self._set: set[int] = set()

    def seen(self, value: int, now_ms: int = 0) -> bool:
        while self._times and self._times[0] < now_ms - self.window_ms:
            self._forget_oldest()
        if value in self._set:
            return True
        if len(self._order) >= self.size:
            self._forget_oldest()
        self._order.append(value)
        self._times.append(now_ms)
        self._set.add(value)
        return False

    def _forget_oldest(self) -> None:
        self._set.discard(self._order.popleft())
        self._times.popleft()

    def __len__(self) -> int:
        return len(self._order)
