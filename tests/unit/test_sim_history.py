"""The simulator's trade history: what its REST API still serves after a stall and a rate-limited backfill."""

from __future__ import annotations

from cryptomon.simulator.engine import HISTORY_SECONDS, history_per_symbol
from cryptomon.simulator.instruments import instrument
from cryptomon.simulator.market import Market


def test_the_first_trade_of_ten_minutes_of_market_is_still_served():
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    rate = 30.0  # market steps a second over the three symbols
    # many listed symbols make the budget's share small (1,000): the rate decides
    kept = history_per_symbol(rate, trading=3, listed=5_000)
    market = Market(symbols, seed=7, history=kept, instruments={s: instrument(s) for s in symbols})
    steps = int(rate / 3 * HISTORY_SECONDS)  # one symbol's steps in HISTORY_SECONDS
    start = market.state["BTCUSDT"].next_trade_id
    for i in range(steps):
        market.step("BTCUSDT", 1_700_000_000_000 + i * 100)
    end = market.state["BTCUSDT"].next_trade_id
    assert end - start > kept / 2  # the steps made about as many trades as the history holds
    first = market.trades_from("BTCUSDT", start, 1000)
    assert [t["id"] for t in first] == list(range(start, start + 1000))
    assert market.trades_from("BTCUSDT", end - 1, 1000)[-1]["id"] == end - 1


def test_the_whole_market_keeps_the_budgets_share_and_a_fast_market_more():
    # 400 symbols at 1,250 steps/s: 10 minutes is ~3,000 trades a symbol, the share 5,000
    assert history_per_symbol(1250, 400, 400) == 5_000
    # 3 symbols at 20,000 events/s (5,450 steps/s): 10 minutes of one is ~1.74 M trades
    assert 1_743_000 < history_per_symbol(5450, 3, 3) < 1_745_000
    assert history_per_symbol(0.0, 3, 3) == 100_000  # the firehose (rate 0): the share, capped
