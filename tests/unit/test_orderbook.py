"""The order book kept by Binance's procedure, on Binance's real frames: after every diff the book's best
bid and ask equal the latest bookTicker at or below its update id (the exchange's own check), and its top
levels equal a reconstruction written here independently (plain dicts, sorted at the end)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.binance.book_check import TopOfBookCheck
from cryptomon.binance.orderbook import DepthDiff, DepthSnapshot, DepthSync, Side, Step, _levels, levels_one_by_one
from cryptomon.binance.schema import DEPTH_SNAPSHOT
from cryptomon.errors import BadData
from cryptomon.simulator.replay import read_timed
from tests.helpers import real_capture
from tests.hostile import EDGES


class NaiveBook:
    """The oracle: the snapshot, then every diff after it, as the docs say, in two dicts."""

    def __init__(self, snapshot: dict):
        self.id = snapshot["lastUpdateId"]
        self.sides = {"b": {}, "a": {}}
        for side, key in (("b", "bids"), ("a", "asks")):
            self.apply_side(side, snapshot[key])
        # how deep the snapshot reached (lowest bid, highest ask): beyond it only levels that changed are known
        self.deepest = (min(self.sides["b"], default=None), max(self.sides["a"], default=None))

    def apply_side(self, side, levels):
        for price, qty, *_ in levels:
            if Decimal(qty) == 0:
                self.sides[side].pop(Decimal(price), None)
            else:
                self.sides[side][Decimal(price)] = Decimal(qty)

    def apply(self, d: dict) -> None:
        if d["u"] <= self.id:
            return
        assert d["U"] <= self.id + 1, "the capture has a gap"
        self.apply_side("b", d["b"])
        self.apply_side("a", d["a"])
        self.id = d["u"]

    def top(self, n):
        bids = sorted(self.sides["b"].items(), reverse=True)[:n]
        asks = sorted(self.sides["a"].items())[:n]
        return bids, asks


def as_decimals(levels):
    return [(Decimal(p), Decimal(q)) for p, q in levels]


def replay_book(name: str, with_ticker: bool):
    """Every frame of a capture, in its order, through DepthSync (and the check); the top 20 levels
    compared with the oracle's every 50 diffs."""
    syncs: dict[str, DepthSync] = {}
    checks: dict[str, TopOfBookCheck] = {}
    oracles: dict[str, NaiveBook] = {}
    seen: dict[str, list[dict]] = {}  # every diff so far: the oracle applies those after its snapshot
    mismatches, compared = [], 0
    for _, symbol, kind, data in read_timed(real_capture(name), snapshots=True):
        sync = syncs.setdefault(symbol, DepthSync(symbol))
        check = checks.setdefault(symbol, TopOfBookCheck())
        if kind == DEPTH_SNAPSHOT:
            assert sync.on_snapshot(DepthSnapshot.from_rest(symbol, data)) is Step.SYNCED
            oracles[symbol] = NaiveBook(data)
            for d in seen.get(symbol, []):
                oracles[symbol].apply(d)
            if with_ticker and (
                m := check.on_book(sync.book.last_update_id, sync.book.best_bid(), sync.book.best_ask())
            ):
                mismatches.append(m)
        elif kind.startswith("depth"):
            step = sync.on_diff(DepthDiff.from_payload(data, symbol))
            seen.setdefault(symbol, []).append(data)
            if symbol in oracles:
                oracles[symbol].apply(data)
            assert step in (Step.BUFFERED, Step.APPLIED, Step.IGNORED), step
            if step is Step.APPLIED:
                book = sync.book
                if with_ticker and (m := check.on_book(book.last_update_id, book.best_bid(), book.best_ask())):
                    mismatches.append(m)
                if sync.applied % 50 == 0:
                    bids, asks = book.top(20)
                    assert (as_decimals(bids), as_decimals(asks)) == oracles[symbol].top(20)
                    compared += 1
                assert not book.crossed()
        elif kind == "bookTicker" and with_ticker:
            mismatches += check.on_ticker(data["u"], (data["b"], data["B"]), (data["a"], data["A"]))
    return syncs, checks, mismatches, compared


@pytest.mark.parametrize(("name", "symbol", "diffs"), [("btcusdt_20240808.gz", "BTCUSDT", 3449),
                                                        ("ethusdt_20240808.gz", "ETHUSDT", 3432)])  # fmt: skip
def test_every_diff_of_the_real_spot_captures_matches_binance_s_own_bookticker(name, symbol, diffs):
    syncs, checks, mismatches, compared = replay_book(name, with_ticker=True)
    sync, check = syncs[symbol], checks[symbol]
    assert sync.synced and sync.resyncs == 0
    assert mismatches == []
    assert sync.applied == diffs  # every diff after the snapshot (BTCUSDT: the count)
    # the book after the snapshot (and the diffs buffered before it) and after every diff since, checked, but
    # the last one when no bookTicker came after it before the capture ended
    buffered = sync.applied - check.checks - check.waiting + 1  # applied at the sync, in one step
    assert 0 <= buffered <= 2 and check.waiting <= 1 and check.unchecked == 0 and check.checks > 3400
    assert compared == sync.applied // 50 > 60


def test_the_cryptofeed_recording_rebuilds_three_books_from_its_rest_snapshots():
    syncs, _, _, compared = replay_book("BINANCE-ee25be.0", with_ticker=False)
    # its README: diffs after each symbol's snapshot
    assert {s: (y.synced, y.applied) for s, y in syncs.items()} == {
        "BTCUSDT": (True, 889), "ETHUSDT": (True, 896), "DOTUSDT": (True, 871)}  # fmt: skip
    assert compared == 889 // 50 + 896 // 50 + 871 // 50


def diff(first: int, final: int, bids=(), asks=()) -> DepthDiff:
    return DepthDiff("BTCUSDT", first, final, 1_723_161_255_208, tuple(bids), tuple(asks))


def snap(last: int, bids=(("100", "1"),), asks=(("101", "1"),)) -> DepthSnapshot:
    return DepthSnapshot("BTCUSDT", last, tuple(bids), tuple(asks))


def test_the_procedure_step_by_step():
    s = DepthSync("BTCUSDT")
    assert s.on_diff(diff(10, 12)) is Step.BUFFERED and s.book is None
    assert s.on_snapshot(snap(9)) is Step.SNAPSHOT_TOO_OLD  # below the first buffered U: fetch another
    assert s.on_diff(diff(13, 15, bids=[("100", "0")])) is Step.BUFFERED
    assert s.on_snapshot(snap(13)) is Step.SYNCED  # diff 10-12 dropped (u <= 13), 13-15 bridges it
    assert s.book.last_update_id == 15 and s.book.best_bid() is None and s.book.best_ask() == ("101", "1")
    assert s.on_diff(diff(14, 15)) is Step.IGNORED  # already in the book
    assert (
        s.on_diff(diff(16, 16, asks=[("102", "0"), ("100.5", "2.5")])) is Step.APPLIED
    )  # removing an absent level is normal
    assert s.book.best_ask() == ("100.5", "2.5") and s.book.known_ask == Decimal("101")
    assert s.on_diff(diff(18, 20)) is Step.GAP  # 17 lost
    assert s.stale and s.book.last_update_id == 16 and s.resyncs == 1  # the last good book, readable
    assert s.first_buffered_id() == 18
    assert s.on_snapshot(snap(19)) is Step.SYNCED and s.book.last_update_id == 20 and not s.stale


def test_a_snapshot_before_any_diff_waits_for_one_and_a_gap_while_buffering_resyncs():
    s = DepthSync("BTCUSDT")
    assert s.on_snapshot(snap(50)) is Step.SNAPSHOT_EARLY
    assert s.on_diff(diff(49, 52)) is Step.SYNCED and s.book.last_update_id == 52
    t = DepthSync("BTCUSDT")
    for d in (diff(10, 12), diff(13, 14), diff(16, 18), diff(19, 19)):  # 15 lost while buffering
        t.on_diff(d)
    assert t.on_snapshot(snap(12)) is Step.GAP and t.stale and t.book.last_update_id == 14
    assert [d.first_id for d in t.buffer] == [16, 19]  # waiting again from the diff after the gap


@pytest.mark.parametrize(
    "payload",
    [
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 4, "b": [], "a": []},  # U > u
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 6, "b": [["1e3", "1"]], "a": []},
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 6, "b": [["0", "1"]], "a": []},
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 6, "b": [["1", "-1"]], "a": []},
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 6, "b": [[1, "1"]], "a": []},
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 6, "b": [["1", "1", "x", "y"]], "a": []},
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 6, "b": [["1", "1"]] * 5001, "a": []},
        {"e": "depthUpdate", "E": 1723161255208, "s": "ETHUSDT", "U": 5, "u": 6, "b": [], "a": []},  # not the stream's
        {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 5, "u": 6, "b": [], "a": []},  # before Binance existed
        {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": True, "u": 6, "b": [], "a": []},
        {"e": "trade", "E": 1723161255208, "s": "BTCUSDT", "U": 5, "u": 6, "b": [], "a": []},
    ],
)
def test_a_hostile_diff_is_bad_data_not_a_broken_book(payload):
    with pytest.raises(BadData):
        DepthDiff.from_payload(payload, "BTCUSDT", latest_ms=1_723_161_300_000)


def test_the_check_waits_for_a_later_ticker_and_counts_a_mismatch():
    c = TopOfBookCheck()
    top = (("100", "1"), ("101", "2"))
    assert c.on_book(10, *top) is None  # no bookTicker above 10 yet: a later one at or below 10 may come
    assert c.on_ticker(8, *top) == [] and c.checks == 0
    assert c.on_ticker(12, ("99", "1"), ("101", "2")) == [] and c.checks == 1  # 8 is the latest <= 10: equal
    assert c.on_book(11, ("100.0", "1.00"), ("101", "2")) is None and c.checks == 2  # decimals, not strings
    assert c.on_book(13, *top) is None  # pending
    (m,) = c.on_ticker(15, *top)  # checked against 12, whose bid is 99
    assert (m.update_id, m.ticker_id, m.ticker[0]) == (13, 12, ("99", "1")) and c.mismatches == 1
    assert c.on_book(7, *top) is None and c.unchecked == 1  # before any bookTicker kept


def test_a_top_is_checked_only_against_a_bookticker_of_its_own_connection_session():
    """Both streams of a symbol come over one connection: bookTickers lost with a connection would make an
    older one look like the latest, so a top of the new session is not checked against the old one's."""
    c = TopOfBookCheck()
    c.on_ticker(8, ("100", "1"), ("101", "2"), session=1)
    # reconnected (session 2): the bookTickers 9..11 were lost with session 1, the book moved on at 11
    assert c.on_book(11, ("99", "1"), ("101", "2"), session=2) is None
    assert c.on_ticker(14, ("99", "1"), ("101", "2"), session=2) == []
    assert (c.checks, c.mismatches, c.unchecked) == (0, 0, 1)  # not a false mismatch against 8
    assert c.on_book(15, ("99", "1"), ("101", "2"), session=2) is None and c.checks == 0  # waits for > 15
    assert c.on_ticker(16, ("99", "1"), ("101", "2"), session=2) == [] and c.checks == 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("set"), st.booleans(), st.integers(90, 110), st.integers(0, 5)),
            st.tuples(st.just("within"), st.booleans(), st.integers(85, 115), st.sampled_from(["x", "y"])),
        ),
        max_size=60,
    )
)
def test_a_sides_band_sums_kept_between_calls_equal_the_sum_over_its_levels(ops):
    """Levels set and removed and bounds moved in any order: each `within` equals Σ price·qty of the levels
    from the best to the bound, summed afresh (the oracle)."""
    sides = {True: Side(bids=True), False: Side(bids=False)}
    for op, bids, a, b in ops:
        side = sides[bids]
        if op == "set":
            side.set([(f"{a}.5", f"{b}.25" if b else "0.00")])
            continue
        bound = Decimal(a)
        got = side.within(b, bound)
        levels = side.levels.items()
        want = sum((p * Decimal(q) for p, (_, q) in levels if (p >= bound if bids else p <= bound)), Decimal(0))
        assert got == want


level_items = st.sampled_from(EDGES) | st.text(alphabet="0123456789.|", max_size=10)
level_lists = st.lists(
    st.lists(level_items, min_size=1, max_size=3) | st.sampled_from(EDGES) | st.just(["1.5", "2"]), max_size=6
)


@settings(max_examples=2000, deadline=None)
@given(level_lists)
def test_levels_in_one_regex_call_are_the_contracts(raw):
    """The one-regex path of a diff's levels gives what the level-by-level contract gives: the same levels,
    or BadData (the contract's own reason is what is raised)."""
    try:
        expected = levels_one_by_one(raw, "b")
    except BadData:
        expected = None
    try:
        got = _levels(raw, "b")
    except BadData:
        got = None
    assert got == expected, raw
