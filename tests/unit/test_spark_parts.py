"""The Spark job's pure parts: which trade ids were counted, what a micro-batch adds to its windows,
where the query starts and when its batches do."""

import dataclasses
import itertools
import threading
import time
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.spark import merge, trade_ids
from cryptomon.spark.pacing import Pacer
from cryptomon.spark.queries import Cuts


def test_spark_starting_offsets_are_cut_to_the_topics_of_a_query():
    from cryptomon.spark.queries import starting_offsets

    both = '{"a": {"0": 5, "1": -1}, "b": {"0": 7}}'
    assert starting_offsets("earliest", ["a"]) == "earliest"
    assert orjson.loads(starting_offsets(both, ["b"])) == {"b": {"0": 7}}
    assert orjson.loads(starting_offsets(both, ["a", "b"])) == orjson.loads(both)


@given(st.lists(st.sets(st.integers(0, 60), max_size=25), max_size=6), st.integers(0, 60), st.integers(0, 10))
def test_counted_ranges_hold_exactly_the_ids_added(batches, probe, width):
    ranges: list = []
    seen: set[int] = set()
    for ids in batches:
        ranges = trade_ids.add(ranges, trade_ids.runs(sorted(ids)))
        seen |= ids
    assert all(a <= b < c - 1 for (a, b), (c, _) in itertools.pairwise(ranges))  # disjoint, merged
    assert {i for a, b in ranges for i in range(a, b + 1)} == seen
    assert trade_ids.contains(ranges, probe) == (probe in seen)
    assert trade_ids.overlaps(ranges, probe, probe + width) == bool(seen & set(range(probe, probe + width + 1)))


def test_counted_ranges_keep_the_highest_when_there_are_too_many():
    ranges = trade_ids.add([], [(2 * i, 2 * i) for i in range(trade_ids.MAX_RANGES + 5)])
    assert len(ranges) == trade_ids.MAX_RANGES and ranges[0] == (10, 10)


GROUP = (
    "topic partition kind symbol window_start n n_ids sum_pq sum_q sum_p sum_pp first_id last_id sum_id sum_id2 sum_spread "
    "max_spread min_spread last_offset bad"
)
Group = namedtuple("Group", GROUP)
Trade = namedtuple("Trade", "symbol trade_id event_time p q")
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def spark_time(t: datetime) -> datetime:
    """A time as PySpark collects it: naive, in the driver's local time."""
    return datetime.fromtimestamp(t.timestamp())


def spark_like_groups(batch: list[tuple[int, Trade]], overflow: set) -> list:
    """What queries.batch_sums gives for a batch of (partition, trade): per partition and (symbol, minute)
    the count, distinct ids, sums over every record (repeats included) and id bounds; None sums where
    `overflow` says Spark's try_sum overflowed."""
    acc: dict = {}
    for part, t in batch:
        acc.setdefault((part, t.symbol, merge.minute(t.event_time)), []).append(t)
    out = []
    for (part, sym, ws), ts in acc.items():
        sums = [sum(t.p * t.q for t in ts), sum(t.q for t in ts), sum(t.p for t in ts), sum(t.p * t.p for t in ts)]
        if (sym, ws) in overflow:
            sums[0] = None
        ids = [t.trade_id for t in ts]
        out.append(Group("binance.trades", part, "trade", sym, spark_time(ws), len(ts), len(set(ids)), *sums, min(ids), max(ids),
                         sum(ids), Decimal(sum(i * i for i in ids)), None, None, None, 1000, 0))  # fmt: skip
    return out


def spark_like_runs(batch: list[tuple[int, Trade]]) -> dict:
    """What queries.trade_runs gives: per (symbol, minute) the runs of consecutive distinct ids (an id minus
    its rank is one number along a run)."""
    ids: dict = {}
    for _, t in batch:
        ids.setdefault((t.symbol, merge.minute(t.event_time)), set()).add(t.trade_id)
    out: dict = {}
    for key, got in ids.items():
        islands: dict = {}
        for rank, i in enumerate(sorted(got)):
            islands.setdefault(i - rank, []).append(i)
        out[key] = sorted((min(v), max(v)) for v in islands.values())
    return out


def test_a_gap_and_its_backfill_take_sparks_sums_and_count_their_runs():
    """A window with a hole in its ids, then the hole filled (a backfill) with newer trades of the window:
    neither needs its trades on the driver, and the counted ids end as one range."""
    trades = [Trade("A", i, T0 + timedelta(seconds=i), Decimal(f"{i}.5"), Decimal("0.1")) for i in range(1, 21)]
    first = [(0, t) for t in trades if not 5 <= t.trade_id <= 8 and t.trade_id <= 15]
    second = [(0, t) for t in trades if 5 <= t.trade_id <= 8 or t.trade_id > 15]
    counted: dict = {}
    total = [0, Decimal(0)]
    for batch in (first, second):
        _, windows, _ = merge.split(spark_like_groups(batch, set()))
        runs = spark_like_runs(batch)
        assert [merge.needs_runs(w, counted) for w in windows] == [True]
        assert not merge.needs_rows(windows[0], counted, runs)
        (s,) = merge.plan(windows, [], counted, runs)
        counted[(s.symbol, s.window_start)] = list(s.ids)
        total[0] += s.n
        total[1] += s.sum_pq
    assert counted == {("A", T0): [(1, 20)]}
    assert total == [20, sum(t.p * t.q for t in trades)]
    # the same hole's trades once more (another offset): counted before, so their trades go to the driver
    again = [(0, t) for t in trades if 5 <= t.trade_id <= 6] + [(0, trades[9])]
    _, windows, _ = merge.split(spark_like_groups(again, set()))
    assert merge.needs_rows(windows[0], counted, spark_like_runs(again))
    assert merge.plan(windows, [t._replace(event_time=spark_time(t.event_time)) for _, t in again], counted,
                      spark_like_runs(again)) == []  # fmt: skip


def trade_window(ids: list[int]) -> merge.TradeWindow:
    """A window of distinct ids as Spark sums it (queries.batch_sums), prices left out."""
    one = Decimal(1)
    return merge.TradeWindow("A", T0, len(ids), len(set(ids)), one, one, one, one, min(ids), max(ids), sum(ids),
                             sum(i * i for i in ids))  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, (1 << 63) - 5_000),
    st.lists(st.integers(0, 60), min_size=2, max_size=400, unique=True),
    st.lists(st.integers(0, 60), max_size=4),
)
def test_one_hole_is_known_from_the_sums_of_the_ids_exactly_when_there_is_one(base, offsets, extra):
    """Any distinct ids (up to Binance's largest, whose squares only a DECIMAL(38,0) holds): the runs from
    the sums equal the islands of the sorted ids when the missing ones are one run, and are None otherwise
    (no hole, or several: the second pass's)."""
    ids = sorted({base + o for o in [*offsets, *(60 + 5 * e for e in extra)]})
    islands: list[list[int]] = []
    for i in ids:  # independent of trade_ids.runs: a new island where the next id is not the last + 1
        if islands and i == islands[-1][-1] + 1:
            islands[-1].append(i)
        else:
            islands.append([i])
    want = [(r[0], r[-1]) for r in islands] if len(islands) == 2 else None
    assert merge.one_hole(trade_window(ids)) == want


def test_sums_of_the_ids_that_are_not_one_run_are_left_to_the_second_pass():
    # ids 10..20 without 12 and 18 (two holes): the missing sum and squares of one run could not be these
    w = trade_window([i for i in range(10, 21) if i not in (12, 18)])
    assert merge.one_hole(w) is None
    # 10..20 without 12, 14 and 16: the count, sum and bounds of 10..20 without 13..15, not its squares
    assert merge.one_hole(trade_window([i for i in range(10, 21) if i not in (12, 14, 16)])) is None
    one = trade_window([i for i in range(10, 21) if i not in (13, 14, 15)])
    assert merge.one_hole(one) == [(10, 12), (16, 20)]
    assert merge.one_hole(dataclasses.replace(one, sum_id2=one.sum_id2 + 2)) is None  # sums of no such ids
    # unknown sums (a window in two partitions, an overflow) or an id twice: None
    assert merge.one_hole(dataclasses.replace(one, sum_id=None)) is None
    assert merge.one_hole(trade_window([10, 10, 13])) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("AB"), st.integers(0, 40), st.sampled_from([0, 0, 0, 1]),
                       st.sampled_from([0, 0, 0, 10])), min_size=1, max_size=80),
    st.lists(st.integers(0, 79), max_size=6),
    st.sets(st.integers(0, 3), max_size=2),
)  # fmt: skip
def test_batches_merged_count_every_trade_once_whatever_the_order_duplicates_and_gaps(order, cuts, overflowing):
    """Trades of two symbols, ids in any order, repeated at will, now and then in a second partition or
    replayed 10 minutes later (the same id at another time: another trade, as in the raw table), cut into
    batches anyhow: the merged windows equal an oracle of each (symbol, event time, id) counted once (the
    first record of a trade wins, as in the raw table)."""
    records = [(part, Trade(s, i, T0 + timedelta(seconds=7 * i, minutes=shift), Decimal(f"{1 + i % 7}.{i:02d}"),
                            Decimal(f"0.{i + 1:03d}"))) for s, i, part, shift in order]  # fmt: skip
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
    counted: dict = {}
    windows: dict = {}
    for lo, hi in itertools.pairwise(bounds):
        batch = records[lo:hi]
        overflow = {(s, T0 + timedelta(minutes=m)) for s in "AB" for m in overflowing}
        ends, trade_windows, _ = merge.split(spark_like_groups(batch, overflow))
        assert [(e.partition, e.last_offset) for e in ends] == sorted({(p, 1000) for p, _ in batch})
        # as the writer: runs from the sums of the ids where one hole, a second pass for the symbols of the others
        known, gaps = merge.runs_from_sums(trade_windows, counted)
        runs = {**{k: v for k, v in spark_like_runs(batch).items() if k[0] in gaps}, **known}
        # and the trades of only the windows whose runs cannot decide (an id counted before, an id twice, an
        # overflow, a window in two partitions)
        slow = {(w.symbol, w.window_start) for w in trade_windows if merge.needs_rows(w, counted, runs)}
        rows = [t._replace(event_time=spark_time(t.event_time)) for _, t in batch
                if (t.symbol, merge.minute(t.event_time)) in slow]  # fmt: skip
        sums = merge.plan(trade_windows, rows, counted, runs)
        counted.update({(x.symbol, x.window_start): list(x.ids) for x in sums})
        for x in sums:
            w = windows.setdefault((x.symbol, x.window_start), [0, 0, 0, 0, 0])
            for k, v in enumerate((x.n, x.sum_pq, x.sum_q, x.sum_p, x.sum_pp)):
                w[k] += v
    first = {}
    for _, t in records:
        first.setdefault((t.symbol, t.event_time, t.trade_id), t)
    want: dict = {}
    for t in first.values():
        w = want.setdefault((t.symbol, merge.minute(t.event_time)), [0, 0, 0, 0, 0])
        for k, v in enumerate((1, t.p * t.q, t.q, t.p, t.p * t.p)):
            w[k] += v
    assert windows == want


def test_spread_groups_of_one_window_in_two_partitions_add_up():
    g = dict(topic="binance.book_ticker", kind="book", symbol="X", window_start=T0, n_ids=0, sum_pq=None, sum_q=None,
             sum_p=None, sum_pp=None, first_id=None, last_id=None, sum_id=None, sum_id2=None, bad=0)  # fmt: skip
    groups = [
        Group(partition=0, n=2, sum_spread=Decimal("0.3"), max_spread=Decimal("0.2"), min_spread=Decimal("0.1"),
              last_offset=7, **g),
        Group(partition=1, n=1, sum_spread=Decimal("0.5"), max_spread=Decimal("0.5"), min_spread=Decimal("0.5"),
              last_offset=3, **g),
        Group("binance.trades", 0, None, None, None, 4, 0, None, None, None, None, None, None, None, None, None, None,
              None, 9, 4),
    ]  # fmt: skip
    ends, trades, spreads = merge.split(groups)
    assert trades == [] and spreads == [merge.SpreadWindow("X", T0, 3, Decimal("0.8"), Decimal("0.5"), Decimal("0.1"))]
    assert [(e.topic, e.partition, e.last_offset, e.bad) for e in ends] == [
        ("binance.book_ticker", 0, 7, 0), ("binance.book_ticker", 1, 3, 0), ("binance.trades", 0, 9, 4)]  # fmt: skip


def test_a_batch_is_counted_before_only_where_a_group_starts_below_its_partitions_next_offset():
    Ends = namedtuple("Ends", "topic partition first_offset")
    groups = [Ends("binance.trades", 0, 100), Ends("binance.trades", 1, 40), Ends("binance.book_ticker", 0, 7)]
    assert not merge.counted_before(groups, {})  # nothing counted yet
    assert not merge.counted_before(groups, {("binance.trades", 0): 100, ("binance.trades", 1): 40})
    assert not merge.counted_before(groups, {("binance.trades", 2): 10**9})  # another partition's offsets
    assert merge.counted_before(groups, {("binance.trades", 1): 41})  # offset 40 was counted
    assert merge.counted_before(groups, {("binance.book_ticker", 0): 8})


def test_a_batch_is_summed_again_with_the_cuts_only_where_a_window_of_its_kind_starts_before_its_cut():
    Windows = namedtuple("Windows", "kind window_start")
    ms = int(T0.timestamp() * 1000)
    groups = [Windows("trade", T0), Windows("book", T0 + timedelta(seconds=30)), Windows(None, None)]  # None: poison
    assert not merge.before_cuts(groups, Cuts(None, None))
    assert not merge.before_cuts(groups, Cuts(ms, ms + 30_000))  # each window starts at its cut
    assert merge.before_cuts(groups, Cuts(ms + 1, None))  # a raw table's chunk boundary inside the trade window
    assert merge.before_cuts(groups, Cuts(None, ms + 30_001))
    assert not merge.before_cuts(groups, Cuts(None, ms + 30_000))  # the trade window is no bookTicker's


def test_paced_batches_start_the_offset_after_each_multiple_of_the_interval_and_at_once_when_behind():
    now = [1_000_000.0]
    pacer = Pacer(10.0, 1.0, clock=lambda: now[0])
    assert pacer.next_start(1_000_000.0) == 1_000_001.0  # a batch begun on a boundary: the next starts 1 s on
    assert pacer.next_start(1_000_001.0) == 1_000_011.0  # begun at its own start: one interval later
    assert pacer.next_start(1_000_001.05) == 1_000_011.0  # Spark's planning took a moment
    assert pacer.next_start(1_000_010.999) == 1_000_011.0
    assert Pacer(1.0, 1.0).offset == 0.0 and Pacer(10.0, 12.5).offset == 2.5  # the offset within an interval
    stopping = threading.Event()
    now[0] = 1_000_012.0  # the batch begun at 1_000_001.05 overran its interval: the next starts at once
    assert pacer.wait(1_000_001.05, stopping) == 0.0
    stopping.set()
    t0 = time.monotonic()
    now[0] = 1_000_001.5
    assert pacer.wait(1_000_001.05, stopping) == pytest.approx(9.5)  # what it was to wait ...
    assert time.monotonic() - t0 < 1.0  # ... cut short: the job is stopping


@given(st.floats(0, 4e9), st.floats(0.5, 60), st.floats(0, 60))
def test_the_next_start_is_within_one_interval_after_and_on_the_offset_grid(began, interval, offset):
    pacer = Pacer(interval, offset)
    start = pacer.next_start(began)
    assert began < start <= began + interval + 1e-6 * max(1.0, began)
    k = (start - pacer.offset) / interval
    assert abs(k - round(k)) < 1e-6 * max(1.0, began)
