import itertools
import statistics

import pytest

from cryptomon.binance.schema import validate_payload
from cryptomon.simulator.market import Conditions, Market, fmt


def run(market, symbol, steps, cond=Conditions()):
    out = []
    for i in range(steps):
        out += market.step(symbol, 1_700_000_000_000 + i, cond)
    return out


def test_same_seed_same_market():
    a, b = Market(("BTCUSDT",), seed=3), Market(("BTCUSDT",), seed=3)
    assert run(a, "BTCUSDT", 50) == run(b, "BTCUSDT", 50)
    assert run(Market(("BTCUSDT",), seed=4), "BTCUSDT", 50) != run(Market(("BTCUSDT",), seed=3), "BTCUSDT", 50)


def test_payloads_are_valid_binance_payloads_with_consecutive_ids():
    m = Market(("BTCUSDT", "ETHUSDT"), seed=1)
    events = run(m, "ETHUSDT", 200)
    for kind, payload in events:
        validate_payload(kind, payload, "ETHUSDT")
    trade_ids = [p["t"] for k, p in events if k == "trade"]
    agg = [p for k, p in events if k == "aggTrade"]
    assert trade_ids == list(range(trade_ids[0], trade_ids[0] + len(trade_ids)))
    assert [a["a"] for a in agg] == list(range(agg[0]["a"], agg[0]["a"] + len(agg)))
    # each aggTrade covers exactly the trades before it, at one price, with their summed quantity
    assert agg[0]["f"] == trade_ids[0] and agg[-1]["l"] == trade_ids[-1]
    for a, b in itertools.pairwise(agg):
        assert b["f"] == a["l"] + 1


def test_calm_market_stays_below_the_volatility_threshold_and_a_burst_exceeds_it():
    for symbol in ("BTCUSDT", "ETHUSDT", "BNBUSDT"):
        m = Market((symbol,), seed=11)
        calm = [float(p["p"]) for k, p in run(m, symbol, 600) if k == "trade"]
        burst = [float(p["p"]) for k, p in run(m, symbol, 600, Conditions(volatility=30.0)) if k == "trade"]
        assert statistics.stdev(calm) < 2.0 < statistics.stdev(burst), symbol


def test_calm_spread_never_triples_but_a_blowout_does():
    m = Market(("BTCUSDT",), seed=5)
    spreads = [float(p["a"]) - float(p["b"]) for k, p in run(m, "BTCUSDT", 300) if k == "bookTicker"]
    assert max(spreads) <= 3 * min(spreads)
    blown = [
        float(p["a"]) - float(p["b"]) for k, p in run(m, "BTCUSDT", 50, Conditions(spread=12.0)) if k == "bookTicker"
    ]
    assert max(blown + spreads) > 3 * min(spreads)


def test_rest_history_matches_the_stream():
    m = Market(("BTCUSDT",), seed=2)
    events = run(m, "BTCUSDT", 100)
    trades = [p for k, p in events if k == "trade"]
    rows = m.trades_from("BTCUSDT", trades[10]["t"], 5)
    assert [r["id"] for r in rows] == [t["t"] for t in trades[10:15]]
    assert [(r["price"], r["qty"], r["isBuyerMaker"]) for r in rows] == [
        (t["p"], t["q"], t["m"]) for t in trades[10:15]
    ]
    aggs = [p for k, p in events if k == "aggTrade"]
    assert m.aggs_from("BTCUSDT", aggs[3]["a"], 2) == [
        {k: a[k] for k in ("a", "p", "q", "f", "l", "T", "m", "M")} for a in aggs[3:5]
    ]


def test_fmt_is_exact():
    assert fmt(9_700_001_000_000) == "97000.01000000"
    assert fmt(1) == "0.00000001"


@pytest.mark.parametrize("snapshot_at", [3, 12, 27])  # before the first diff; between the 2nd and 3rd; 5th and 6th
@pytest.mark.parametrize(("symbol", "spread"), [("BTCUSDT", 1.0), ("PEPEUSDT", 40.0)])
def test_the_depth_stream_keeps_a_client_s_book_equal_to_the_simulator_s(symbol, spread, snapshot_at):
    """A client that syncs by Binance's rules from a snapshot taken between two diffs holds, after every
    diff, the book a new snapshot shows, and its best levels are the latest bookTicker's (wide spreads
    move the best levels many ticks at once: the levels of every book in between are in the diff, since
    the snapshot may have shown any of them)."""
    m = Market((symbol,), seed=7)
    cond = Conditions(spread=spread)
    u = 0
    client = None
    ticker = None
    for n in range(400):
        for kind, payload in m.step(symbol, 1_723_161_255_000 + n * 10, cond):
            if kind == "bookTicker":
                ticker = payload
        if n == snapshot_at:  # the snapshot comes between two diffs
            bids, asks = m.depth_levels(symbol, 1000)
            client = ({p: q for p, q in bids}, {p: q for p, q in asks}, m.state[symbol].last_update_id)
        if n % 5 == 4:  # a diff every 5 steps
            bids, asks = m.depth_diff(symbol)
            u = m.state[symbol].last_update_id
            if client is None or u <= client[2]:
                continue
            for side, levels in ((client[0], bids), (client[1], asks)):
                for p, q in levels:
                    if float(q) == 0:
                        side.pop(p, None)
                    else:
                        side[p] = q
            now_b, now_a = m.depth_levels(symbol, 1000)
            assert client[0] == dict(map(tuple, now_b)) and client[1] == dict(map(tuple, now_a)), n
            best_bid = max(client[0], key=float)
            best_ask = min(client[1], key=float)
            assert (best_bid, client[0][best_bid], best_ask, client[1][best_ask]) == (
                ticker["b"], ticker["B"], ticker["a"], ticker["A"])  # fmt: skip
    assert u > 100
