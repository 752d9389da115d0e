"""What one micro-batch adds to the metric windows: Spark's groups added up per window, and for a trade
window Spark's sums where none of its trades was counted before, otherwise the driver's own, from the
window's trades, leaving out the ids the window has counted already (pure; the design and why it is
exact: docs/design.md).

A trade is the raw table's (symbol, event_time, trade_id): the same id at two offsets within its window
is one trade, counted once; the same id in another window (a recording replayed at other times) is
another trade of that window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext

from cryptomon.spark import trade_ids
from cryptomon.spark.trade_ids import Range

Window = tuple[str, datetime]  # symbol, window_start

# p*q has up to 16 + 20 significant digits and a day's sum a few more: Decimal's default 28 would round
EXACT_DIGITS = 80


@dataclass(frozen=True, slots=True)
class Sums:
    """A window's share of one batch: count and exact sums of p*q, q, p, p*p, and the ids the window has
    counted once it is merged (its earlier ones and this batch's)."""

    symbol: str
    window_start: datetime
    n: int
    sum_pq: Decimal
    sum_q: Decimal
    sum_p: Decimal
    sum_pp: Decimal
    ids: tuple[Range, ...]


@dataclass(frozen=True, slots=True)
class End:
    """Where a batch ends in a Kafka partition, and how many of its records there the metrics cannot use."""

    topic: str
    partition: int
    last_offset: int
    bad: int


@dataclass(frozen=True, slots=True)
class TradeWindow:
    """Spark's sums of a trade window over one batch: n records, n_ids distinct ids, first and last id."""

    symbol: str
    window_start: datetime
    n: int
    n_ids: int
    sum_pq: Decimal | None
    sum_q: Decimal | None
    sum_p: Decimal | None
    sum_pp: Decimal | None
    first_id: int
    last_id: int
    sum_id: int | None = None  # the sums of the ids and of their squares (None: unknown, or overflowed)
    sum_id2: int | None = None


@dataclass(frozen=True, slots=True)
class SpreadWindow:
    symbol: str
    window_start: datetime
    n: int
    sum_spread: Decimal
    max_spread: Decimal
    min_spread: Decimal


def split(groups) -> tuple[list[End], list[TradeWindow], list[SpreadWindow]]:
    """Spark's groups (queries.batch_sums) -> where each partition ends, the trade windows and the spread
    windows, each window once. A symbol is one partition's (Kafka's key), so a window is one group; one
    written into several partitions by someone else is added up here, its trades then counted on the
    driver (their ids may repeat across the groups)."""
    ends: dict[tuple[str, int], list[int]] = {}
    trades: dict[tuple[str, datetime], TradeWindow] = {}
    spreads: dict[tuple[str, datetime], SpreadWindow] = {}
    for g in groups:
        e = ends.setdefault((g.topic, g.partition), [g.last_offset, 0])
        e[0], e[1] = max(e[0], g.last_offset), e[1] + g.bad
        if g.kind not in ("trade", "book"):  # the partition's poison only
            continue
        start = utc(g.window_start)
        key = (g.symbol, start)
        if g.kind == "trade":
            w = TradeWindow(g.symbol, start, g.n, g.n_ids, g.sum_pq, g.sum_q, g.sum_p, g.sum_pp, g.first_id,
                            g.last_id, _int(g.sum_id), _int(g.sum_id2))  # fmt: skip
            if (o := trades.get(key)) is not None:
                w = TradeWindow(g.symbol, start, o.n + w.n, -1, None, None, None, None,
                                min(o.first_id, w.first_id), max(o.last_id, w.last_id))  # fmt: skip
            trades[key] = w
        elif g.kind == "book":
            sw = SpreadWindow(g.symbol, start, g.n, g.sum_spread, g.max_spread, g.min_spread)
            if (x := spreads.get(key)) is not None:
                sw = SpreadWindow(g.symbol, start, x.n + sw.n, x.sum_spread + sw.sum_spread,
                                  max(x.max_spread, sw.max_spread), min(x.min_spread, sw.min_spread))  # fmt: skip
            spreads[key] = sw
    return (
        [End(t, p, last, bad) for (t, p), (last, bad) in sorted(ends.items())],
        [trades[k] for k in sorted(trades)],
        [spreads[k] for k in sorted(spreads)],
    )


def counted_before(groups, start: dict[tuple[str, int], int]) -> bool:
    """Whether some group of a batch (queries.batch_sums) holds a record at an offset its partition has
    counted already: `start` is each partition's next offset to count (metric_offsets; none: nothing yet)."""
    return any(g.first_offset < start.get((g.topic, g.partition), 0) for g in groups)


def before_cuts(groups, cuts) -> bool:
    """Whether some trade or spread window of a batch (queries.batch_sums, summed without cuts) starts
    before its kind's cut (queries.Cuts, epoch ms; None: none), so that some of its records, or all, are to
    be set aside. A cut is a window's start when it comes from a metric table's horizon, and a chunk's
    boundary from a raw table's: a window that starts before a cut that is not a window's start may hold
    no record before it, and is then only summed once more."""
    limit = {"trade": cuts.trade, "book": cuts.book}
    return any((c := limit.get(g.kind)) is not None and g.window_start.timestamp() * 1000 < c for g in groups)


def exact(w: TradeWindow) -> bool:
    """Whether Spark's sums of window `w` over the batch are each trade once: none overflowed, no id twice."""
    return None not in (w.sum_pq, w.sum_q, w.sum_p, w.sum_pp) and w.n == w.n_ids


def whole(w: TradeWindow, counted: dict[Window, list[Range]]) -> bool:
    """Whether the batch's ids of window `w` are exactly first..last and none of them was counted in it
    before. `counted`: the ids each window has counted (trade_metrics.counted_ids)."""
    return w.n == w.last_id - w.first_id + 1 and not trade_ids.overlaps(
        counted.get((w.symbol, w.window_start), []), w.first_id, w.last_id
    )


def needs_runs(w: TradeWindow, counted: dict[Window, list[Range]]) -> bool:
    """Whether Spark's sums of `w` are exact but its ids are not one new range (a gap, to be filled later,
    or a backfill filling one): then its runs of ids (queries.trade_runs) decide whether any was counted."""
    return exact(w) and not whole(w, counted)


def one_hole(w: TradeWindow) -> list[Range] | None:
    """The runs of ids of window `w` when the ids missing between its first and last are one run (a gap
    not yet filled: a stall), from the sums of its ids and their squares alone; None otherwise or unknown.

    The missing ids are the range's less the batch's (distinct when exact(w)): m of them, sum M1 and sum of
    squares M2, all exact integers. For m distinct integers, m * M2 - M1^2 is the sum of (a_j - a_i)^2 over
    their pairs, at least the sum of (j - i)^2 = m^2 (m^2 - 1) / 12 with equality only when they are
    consecutive; then their mean places them."""
    if not exact(w) or w.sum_id is None or w.sum_id2 is None:
        return None
    first, last = w.first_id, w.last_id
    m = last - first + 1 - w.n
    if m <= 0:
        return None
    # sums over first..last of i and of i^2, each as the difference of two prefix sums
    m1 = _prefix1(last) - _prefix1(first - 1) - w.sum_id
    m2 = _prefix2(last) - _prefix2(first - 1) - w.sum_id2
    if m * m2 - m1 * m1 != m * m * (m * m - 1) // 12:
        return None
    low, rest = divmod(m1 - m * (m - 1) // 2, m)
    if rest or not first < low <= last - m:
        return None  # not sums of ids of this window: set aside for the runs of Spark's pass
    return [(first, low - 1), (low + m, last)]


def _prefix1(k: int) -> int:
    """0 + 1 + ... + k (0 for k < 1; trade ids are >= 0)."""
    return k * (k + 1) // 2 if k > 0 else 0


def _prefix2(k: int) -> int:
    return k * (k + 1) * (2 * k + 1) // 6 if k > 0 else 0


def _int(v) -> int | None:
    """A sum Spark collected (an int, or a Decimal of scale 0 for the squares) as an int."""
    return None if v is None else int(v)


def needs_rows(w: TradeWindow, counted: dict[Window, list[Range]], runs: dict[Window, list[Range]]) -> bool:
    """Whether Spark's sums of window `w` cannot be taken as they are: a sum overflowed, an id is there
    twice, or some of its ids were counted in this window by an earlier batch (by its runs when its ids are
    not first..last; no runs: counted as overlapping). `runs`: the batch's runs of ids per window."""
    if not exact(w):
        return True
    if whole(w, counted):
        return False
    key = (w.symbol, w.window_start)
    got = runs.get(key)
    return got is None or any(trade_ids.overlaps(counted.get(key, []), first, last) for first, last in got)


def runs_from_sums(windows: list[TradeWindow], counted: dict[Window, list[Range]]):
    """For the windows that need runs (needs_runs): those one_hole() knows, and the symbols of the others,
    whose runs a second pass over the batch must find (queries.trade_runs)."""
    known: dict[Window, list[Range]] = {}
    rest: set[str] = set()
    for w in windows:
        if needs_runs(w, counted):
            if (got := one_hole(w)) is not None:
                known[(w.symbol, w.window_start)] = got
            else:
                rest.add(w.symbol)
    return known, sorted(rest)


def runs_by_window(rows) -> dict[Window, list[Range]]:
    """queries.trade_runs' rows (symbol, window_start, first_id, last_id) as each window's sorted runs."""
    out: dict[Window, list[Range]] = {}
    for r in rows:
        out.setdefault((r.symbol, utc(r.window_start)), []).append((r.first_id, r.last_id))
    return {k: sorted(v) for k, v in out.items()}


def utc(t: datetime) -> datetime:
    """A time Spark collected (PySpark gives naive local times) as an aware UTC one, as PostgreSQL's are."""
    return t.astimezone(UTC)


def minute(t: datetime) -> datetime:
    return utc(t).replace(second=0, microsecond=0)


def plan(
    windows: list[TradeWindow], rows, counted: dict[Window, list[Range]], runs: dict[Window, list[Range]]
) -> list[Sums]:
    """The batch's sums to merge, each with its window's counted ids. `windows`: split()'s; `runs`: the
    runs of ids of at least every window for which needs_runs(); `rows`: the trades (symbol, trade_id,
    event_time, p, q) of at least every window for which needs_rows(); an id twice in a window is counted
    once."""
    out: list[Sums] = []
    slow: set[Window] = set()
    for w in windows:
        key = (w.symbol, w.window_start)
        if needs_rows(w, counted, runs):
            slow.add(key)
            continue
        assert w.sum_pq is not None and w.sum_q is not None and w.sum_p is not None and w.sum_pp is not None
        new = [(w.first_id, w.last_id)] if whole(w, counted) else runs[key]
        ids = trade_ids.add(counted.get(key, []), new)
        out.append(Sums(w.symbol, w.window_start, w.n, w.sum_pq, w.sum_q, w.sum_p, w.sum_pp, tuple(ids)))
    acc: dict[Window, list] = {}
    seen: dict[Window, set[int]] = {}
    with localcontext(prec=EXACT_DIGITS):
        for r in rows:
            key = (r.symbol, minute(r.event_time))
            if key not in slow or r.trade_id in seen.get(key, ()):
                continue
            if trade_ids.contains(counted.get(key, []), r.trade_id):
                continue
            a = acc.setdefault(key, [0, Decimal(0), Decimal(0), Decimal(0), Decimal(0)])
            a[0] += 1
            a[1] += r.p * r.q
            a[2] += r.q
            a[3] += r.p
            a[4] += r.p * r.p
            seen.setdefault(key, set()).add(r.trade_id)
    for (symbol, window_start), (n, sum_pq, sum_q, sum_p, sum_pp) in sorted(acc.items()):
        ids = trade_ids.add(counted.get((symbol, window_start), []), trade_ids.runs(sorted(seen[symbol, window_start])))
        out.append(Sums(symbol, window_start, n, sum_pq, sum_q, sum_p, sum_pp, tuple(ids)))
    return out
