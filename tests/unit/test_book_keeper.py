"""The book stage's logic on the real captures, as binance.depth would hold them (both symbols' diffs in
one partition in the order they came, each recorded snapshot where it was taken): one row per symbol and
second of event time, equal to the independent reconstruction's book after the last diff of that second;
a checkpoint and a restart anywhere give the same rows as a run without one."""

from __future__ import annotations

import functools
from collections import defaultdict
from decimal import Decimal

import pytest

from cryptomon.binance.schema import DEPTH_SNAPSHOT
from cryptomon.book.keeper import BookKeeper
from cryptomon.errors import BadData
from cryptomon.simulator.replay import read_captures
from tests.helpers import real_capture
from tests.unit.test_orderbook import NaiveBook

TOPIC = "binance.depth"


@functools.cache
def records():
    """binance.depth's partition 0 (offset = index): the two captures merged by receive time."""
    files = [real_capture("btcusdt_20240808.gz"), real_capture("ethusdt_20240808.gz")]
    out = []
    for _, sym, kind, d in read_captures(files, snapshots=True):
        if kind == DEPTH_SNAPSHOT:
            out.append({"e": DEPTH_SNAPSHOT, "s": sym, **d})
        elif kind.startswith("depth@"):
            out.append(d)
    return out


def walk_books(values, close) -> tuple[dict, dict]:
    """The independent reconstruction, record by record: `close(sym, book, last_ms)` with each symbol's
    book after the last diff of each second of E but its last. Returns the books and, per symbol, the E of
    its last diff applied."""
    books, seen, last = {}, defaultdict(list), {}
    for v in values:
        sym = v["s"]
        if v["e"] == DEPTH_SNAPSHOT:  # the diffs that came before it, from the one it bridges
            book = books[sym] = NaiveBook(v)
            applied = [d for d in seen[sym] if d["u"] > book.id]
        else:
            seen[sym].append(v)
            book = books.get(sym)
            applied = [v] if book is not None and v["u"] > book.id else []
        for d in applied:
            if sym in last and last[sym] // 1000 != d["E"] // 1000:
                close(sym, book, last[sym])
            book.apply(d)
            last[sym] = d["E"]
    return books, last


def oracle_rows(values, levels=20):
    """Per symbol and second of E after its snapshot: the book after the last diff of that second."""
    rows = {}

    def close(sym, book, last_ms):  # the book as it stands is its second's row
        rows[(sym, last_ms // 1000)] = (last_ms, book.id, *book.top(levels))

    books, last = walk_books(values, close)
    for sym, last_ms in last.items():
        close(sym, books[sym], last_ms)
    return rows


def as_oracle(row):
    def levels(prices, qtys):
        return [(Decimal(p), Decimal(q)) for p, q in zip(prices, qtys, strict=True)]

    key = (row.symbol, row.snapshot_ms // 1000)
    return key, (row.snapshot_ms, row.last_update_id, levels(row.bid_prices, row.bid_qtys),
                 levels(row.ask_prices, row.ask_qtys))  # fmt: skip


@functools.cache
def uninterrupted():
    return run(BookKeeper(TOPIC), records())


def run(keeper, values, start=0):
    rows = []
    for offset, v in enumerate(values[start:], start):
        rows += keeper.on_depth(v, 0, offset)
    return rows


def test_one_row_per_symbol_and_second_equal_to_the_reconstruction():
    values = records()
    rows = uninterrupted()
    want = oracle_rows(values)
    got = dict(as_oracle(r) for r in rows)
    assert len(got) == len(rows)  # never two rows for one symbol and second
    # every second but the last of each symbol (its row waits for a later diff or the partition's event time)
    last = {s: max(sec for (sym, sec) in want if sym == s) for s in ("BTCUSDT", "ETHUSDT")}
    assert got == {k: v for k, v in want.items() if k[1] != last[k[0]]}
    assert len(got) > 2 * 340  # ~6 minutes of each


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.93])
def test_a_restart_from_a_checkpoint_writes_the_same_rows(cut):
    values, whole = records(), uninterrupted()
    first = BookKeeper(TOPIC)
    at = int(len(values) * cut)
    before = run(first, values[:at])
    point = first.checkpoint()
    (offset, mark), = [v for (t, _), v in point.positions.items() if t == TOPIC]  # fmt: skip
    second = BookKeeper(TOPIC)
    second.restore(point.states, {0: mark})
    after = run(second, values, start=offset)
    key = lambda r: (r.symbol, r.last_update_id)  # noqa: E731
    assert {key(r): r for r in before + after} == {key(r): r for r in whole}


def test_a_hostile_record_changes_nothing():
    k = BookKeeper(TOPIC)
    for bad in ({"e": "depthSnapshot", "s": "btc usdt", "lastUpdateId": 1, "bids": [], "asks": []},
                {"e": "depthSnapshot", "s": "BTCUSDT", "lastUpdateId": -1, "bids": [], "asks": []},
                {"e": "depthUpdate", "s": "BTCUSDT", "E": 1723161255208, "U": 1, "u": 2, "b": [["x", "1"]], "a": []}):  # fmt: skip
        with pytest.raises(BadData):
            k.on_depth(bad, 0, 0)
    assert k.books == {} and k.next_offsets == {(TOPIC, 0): 1}


def test_buffered_counts_the_diffs_of_books_waiting_and_none_once_synced():
    """What the stage watches to give memory back after a resync (book/service.py, cryptomon.runtime)."""
    k = BookKeeper(TOPIC)
    waiting = {}
    for offset, v in enumerate(records()):
        if v["e"] == DEPTH_SNAPSHOT:
            if v["s"] in waiting and k.buffered() > 0:
                break
            continue
        k.on_depth(v, 0, offset)
        waiting[v["s"]] = waiting.get(v["s"], 0) + 1
        assert k.buffered() == sum(waiting.values())  # nothing synced before the first snapshot
    assert k.buffered() > 0
    for offset, v in enumerate(records()):
        k.on_depth(v, 0, offset)
    assert not k.waiting() and k.buffered() == 0
