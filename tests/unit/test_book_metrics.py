"""The book stage's liquidity metrics on the real captures: each window of book_metrics equal to an
independent computation from the files (the reconstruction's full book at each row, summed by plain loops
over dicts), whichever way the records were read — a restart from a checkpoint, after windows were
written past it, gives the same windows as a run without one."""

from __future__ import annotations

import functools
from collections import defaultdict
from decimal import Decimal

import pytest

from cryptomon.binance.orderbook import DepthSnapshot, OrderBook
from cryptomon.book.keeper import BookKeeper
from cryptomon.book.metrics import LIQUIDITY_MIN_HISTORY, PLACES, LiquidityWatch, Window, sample
from cryptomon.errors import BadData
from tests.unit.test_book_keeper import TOPIC, records, walk_books

WINDOW_MS = 30_000


def oracle_samples(values) -> dict[tuple[str, int], dict]:
    """Per symbol and window: the sums of the samples (the book after the last diff of each second)."""
    windows: dict[tuple[str, int], dict] = {}

    def close(sym, book, last_ms):
        bids, asks = book.sides["b"], book.sides["a"]
        bp, ap = max(bids), min(asks)
        bq, aq = bids[bp], asks[ap]
        mid = (bp + ap) / 2
        w = windows.setdefault((sym, last_ms // WINDOW_MS * WINDOW_MS), defaultdict(Decimal))
        w["samples"] += 1
        w["mid"], w["microprice"] = mid, (bp * aq + ap * bq) / (bq + aq)
        w["spread_sum"] += ap - bp
        w["spread_bps_sum"] += ((ap - bp) / mid * 10_000).quantize(PLACES)
        w["spread_max"] = max(w["spread_max"], ap - bp)
        for name, band in (("10bps", Decimal("0.001")), ("1pct", Decimal("0.01"))):
            lo, hi = mid * (1 - band), mid * (1 + band)
            if book.deepest[0] > lo or book.deepest[1] < hi:
                continue  # the snapshot did not reach the band's edge
            b = sum((p * q for p, q in bids.items() if p >= lo), Decimal(0))
            a = sum((p * q for p, q in asks.items() if p <= hi), Decimal(0))
            w[f"depth_{name}_samples"] += 1
            w[f"bid_{name}_sum"] += b
            w[f"ask_{name}_sum"] += a
            if name == "10bps" and b + a:
                w["imbalance_10bps_sum"] += ((b - a) / (b + a)).quantize(PLACES)

    walk_books(values, close)
    return windows


def as_sums(w: Window) -> dict:
    fields = ("samples", "mid", "microprice", "spread_sum", "spread_bps_sum", "spread_max", "depth_10bps_samples",
              "imbalance_10bps_sum", "depth_1pct_samples")  # fmt: skip
    out = {f: getattr(w, f) for f in fields}
    out |= {"bid_10bps_sum": w.bid_10bps_sum, "ask_10bps_sum": w.ask_10bps_sum, "bid_1pct_sum": w.bid_1pct_sum,
            "ask_1pct_sum": w.ask_1pct_sum}  # fmt: skip
    return {k: v for k, v in out.items() if v}  # the oracle holds only what some sample added


class Db:
    """book_metrics as the store keeps it: an upsert never moves a window back."""

    def __init__(self):
        self.rows: dict[tuple[str, int], tuple] = {}

    def write(self, windows):
        for w in windows:
            old = self.rows.get((w.symbol, w.start_ms))
            if old is None or old[2] < w.last_update_id:
                self.rows[(w.symbol, w.start_ms)] = w.row()

    def windows(self) -> list[Window]:
        return [Window.from_row(row) for row in self.rows.values()]


def run(keeper, values, db, start=0, stop=None):
    for offset, v in enumerate(values[start:stop], start):
        keeper.on_depth(v, 0, offset)
        if offset % 97 == 0:
            db.write(keeper.take_windows())
    db.write(keeper.take_windows())


@functools.cache
def uninterrupted() -> dict:
    db = Db()
    run(BookKeeper(TOPIC, window_ms=WINDOW_MS), records(), db)
    return db.rows


def test_each_window_equals_the_computation_from_the_files():
    want = oracle_samples(records())
    got = {k: as_sums(Window.from_row(r)) for k, r in uninterrupted().items()}
    last = {sym: max(start for (s, start) in want if s == sym) for sym, _ in want}
    complete = {k: {f: v for f, v in w.items() if v} for k, w in want.items() if k[1] < last[k[0]]}
    assert {k: v for k, v in got.items() if k in complete} == complete
    assert len(complete) >= 2 * 11  # ~6 minutes of each symbol
    btc = [w for (s, _), w in sorted(complete.items()) if s == "BTCUSDT"]
    eth = [w for (s, _), w in sorted(complete.items()) if s == "ETHUSDT"]
    # 1,000-level snapshots reach ~0.33 % (BTCUSDT) and ~0.86 % (ETHUSDT) of the price: 1 % is never known
    # whole; 10 bps is, until BTCUSDT's price fell towards the snapshot's deepest bid (minute 4 on)
    assert not any("depth_1pct_samples" in w for w in btc + eth)
    assert all(w["depth_10bps_samples"] == w["samples"] for w in btc[:7] + eth)
    assert [w.get("depth_10bps_samples", 0) for w in btc[7:]] == [23, 3, 8, 26, 11]


@pytest.mark.parametrize("cut", [0.2, 0.6])
def test_a_restart_after_windows_were_written_past_its_checkpoint_gives_the_same_windows(cut):
    values = records()
    db, first = Db(), BookKeeper(TOPIC, window_ms=WINDOW_MS)
    at = int(len(values) * cut)
    run(first, values, db, stop=at)
    point = first.checkpoint()
    run(first, values, db, start=at, stop=at + 700)  # windows written, then a crash before the next checkpoint
    (offset, mark), = [v for (t, _), v in point.positions.items() if t == TOPIC]  # fmt: skip
    second = BookKeeper(TOPIC, window_ms=WINDOW_MS)
    second.restore(point.states, {0: mark})
    second.restore_windows(db.windows())
    run(second, values, db, start=offset)
    assert db.rows == uninterrupted()


def test_a_band_the_snapshot_reached_is_summed_one_it_did_not_reach_is_unknown():
    bids = (("99.95", "1"), ("99.5", "2"), ("98.9", "4"), ("97", "8"))  # mid 100: 10 bps = 99.9, 1 % = 99
    asks = (("100.05", "1"), ("100.5", "3"), ("100.99", "5"))  # the deepest ask is inside the 1 % band
    s = sample(OrderBook(DepthSnapshot("X", 1, bids, asks)))
    assert s is not None and (s.mid, s.spread) == (Decimal(100), Decimal("0.10"))
    assert s.microprice == Decimal(100)  # equal quantities at the top: the mid
    assert s.depth_10bps == (Decimal("99.95"), Decimal("100.05"))
    assert s.depth_1pct is None  # asks beyond 100.99 are not known
    s2 = sample(OrderBook(DepthSnapshot("X", 1, bids, (*asks, ("101.5", "1")))))
    assert s2 is not None and s2.depth_1pct == (Decimal("99.95") + Decimal("199.0"),
                                                Decimal("100.05") + Decimal("301.5") + Decimal("504.95"))  # fmt: skip


def test_a_window_whose_depth_falls_below_the_fraction_of_its_trailing_median_is_flagged():
    watch = LiquidityWatch("10bps", Decimal("0.5"))

    def window(depth: int | None) -> Window:
        w = Window("X", 0)
        if depth is not None:
            w.depth_10bps_samples, w.bid_10bps_sum = 2, Decimal(2 * depth)
        return w

    for d in [100, 120, 80] * 3:  # nine windows: too few for a median yet
        watch.closed(window(d))
    assert not watch.flag(window(10))
    watch.closed(window(None))  # a window that did not know its band: not in the history
    assert not watch.flag(window(10)) and len(watch.history["X"]) == LIQUIDITY_MIN_HISTORY - 1
    watch.closed(window(100))  # the median of 80, 80, 80, 100, 100, 100, 100, 120, 120, 120 is 100
    assert watch.flag(window(49)) and not watch.flag(window(50)) and not watch.flag(window(None))


def test_a_side_shorter_than_the_levels_asked_for_is_known_whole_and_survives_a_checkpoint():
    """A thin book: 1,000 levels asked, 2 bids and 1 ask came, so there is nothing beyond them and both
    bands are known; without the limit (a bare REST answer) the same levels reach only as far as they go."""
    snap = {"e": "depthSnapshot", "s": "THINUSDT", "lastUpdateId": 7, "bids": [["99.99", "1"], ["99.5", "2"]],
            "asks": [["100.01", "3"]], "limit": 1000}  # fmt: skip
    thin = sample(OrderBook(DepthSnapshot.from_rest("THINUSDT", snap)))
    assert thin is not None and thin.depth_1pct == (Decimal("99.99") + Decimal("199.0"), Decimal("300.03"))
    bare = sample(OrderBook(DepthSnapshot.from_rest("THINUSDT", {k: v for k, v in snap.items() if k != "limit"})))
    assert bare is not None and bare.depth_1pct is None and bare.depth_10bps is None  # the ask reaches 100.01 only
    keeper = BookKeeper(TOPIC)
    keeper.on_depth(
        {"e": "depthUpdate", "E": 1_700_000_000_000, "s": "THINUSDT", "U": 5, "u": 8, "b": [], "a": []}, 0, 0
    )
    keeper.on_depth(snap, 0, 1)
    again = BookKeeper(TOPIC)
    again.restore(keeper.checkpoint().states, {0: 2})
    book = again.books["THINUSDT"].sync.book
    assert book is not None and (book.known_bid, book.known_ask) == (Decimal(0), Decimal("Infinity"))
    for bad in (0, -1, 5001, "1000", 1.5):
        with pytest.raises(BadData):
            DepthSnapshot.from_rest("THINUSDT", {**snap, "limit": bad})
