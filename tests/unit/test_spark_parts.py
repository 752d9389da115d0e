"""The Spark job's pure parts: which trade ids were counted, what a micro-batch adds to its windows, and
where the query starts."""

import itertools
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.spark import merge, trade_ids


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


Window = namedtuple("Window", "symbol window_start n sum_pq sum_q sum_p sum_pp first_id last_id")
Trade = namedtuple("Trade", "symbol trade_id event_time p q")
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def spark_like_sums(batch: list[Trade], overflow: set) -> list[Window]:
    """What queries.trade_sums gives for a batch: one trade per id, then sums per (symbol, minute);
    None sums where `overflow` says Spark's try_sum overflowed."""
    one = {(t.symbol, t.trade_id): t for t in batch}
    acc: dict = {}
    for t in one.values():
        acc.setdefault((t.symbol, merge.minute(t.event_time)), []).append(t)
    out = []
    for (sym, ws), ts in acc.items():
        sums = [sum(t.p * t.q for t in ts), sum(t.q for t in ts), sum(t.p for t in ts), sum(t.p * t.p for t in ts)]
        if (sym, ws) in overflow:
            sums[0] = None
        ids = [t.trade_id for t in ts]
        out.append(Window(sym, ws, len(ts), *sums, min(ids), max(ids)))
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("AB"), st.integers(0, 40)), min_size=1, max_size=80),
    st.lists(st.integers(0, 79), max_size=6),
    st.sets(st.integers(0, 3), max_size=2),
)
def test_batches_merged_count_every_trade_id_once_whatever_the_order_duplicates_and_gaps(order, cuts, overflowing):
    """Trades of two symbols, ids in any order, repeated at will, cut into batches anyhow: the merged windows
    equal an oracle of each (symbol, id) counted once (the first record of an id wins, as in the raw table)."""
    records = [Trade(s, i, T0 + timedelta(seconds=7 * i), Decimal(f"{1 + i % 7}.{i:02d}"), Decimal(f"0.{i + 1:03d}"))
               for s, i in order]  # fmt: skip
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
    counted: dict = {}
    windows: dict = {}
    for lo, hi in itertools.pairwise(bounds):
        batch = records[lo:hi]
        overflow = {(s, T0 + timedelta(minutes=m)) for s in "AB" for m in overflowing}
        sums, ranges = merge.plan(spark_like_sums(batch, overflow), batch, counted)
        counted.update(ranges)
        for x in sums:
            w = windows.setdefault((x.symbol, x.window_start), [0, 0, 0, 0, 0])
            for k, v in enumerate((x.n, x.sum_pq, x.sum_q, x.sum_p, x.sum_pp)):
                w[k] += v
    first = {}
    for t in records:
        first.setdefault((t.symbol, t.trade_id), t)
    want: dict = {}
    for t in first.values():
        w = want.setdefault((t.symbol, merge.minute(t.event_time)), [0, 0, 0, 0, 0])
        for k, v in enumerate((1, t.p * t.q, t.q, t.p, t.p * t.p)):
            w[k] += v
    assert windows == want
