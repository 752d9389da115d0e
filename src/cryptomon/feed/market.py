"""A seeded market model for the exchange simulator (pure: no I/O, no clock).

Prices are integers in units of 1e-8 (Binance's 8 decimals) so formatting is exact. The price follows a
mean-reverting random walk around an anchor, so a calm market has a bounded 1-minute price stddev and a
burst (volatility multiplier) raises it predictably. Each step is one taker order: 1-3 trades at one
price (ids consecutive), the aggTrade that aggregates them, and a bookTicker update.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SCALE = 10**8
TICK = SCALE // 100  # 0.01

# (anchor price, per-trade price step sigma in USD, typical trade quantity)
DEFAULT_PROFILE = {
    "BTCUSDT": (97_000.0, 0.08, 0.02),
    "ETHUSDT": (3_400.0, 0.05, 0.4),
    "BNBUSDT": (650.0, 0.03, 2.0),
}
FALLBACK_PROFILE = (100.0, 0.02, 5.0)


def fmt(units: int) -> str:
    return f"{units // SCALE}.{units % SCALE:08d}"


@dataclass(frozen=True)
class Conditions:
    """Multipliers a scenario phase applies to the calm market."""

    volatility: float = 1.0
    volume: float = 1.0
    spread: float = 1.0


@dataclass
class TradeRecord:
    id: int
    price: int
    qty: int
    time: int
    buyer_maker: bool


@dataclass
class AggRecord:
    id: int
    price: int
    qty: int
    first: int
    last: int
    time: int
    buyer_maker: bool


@dataclass
class SymbolState:
    symbol: str
    anchor: int
    sigma: float
    base_qty: float
    offset: float = 0.0  # price - anchor, in USD
    next_trade_id: int = 1
    next_agg_id: int = 1
    next_update_id: int = 1
    trades: list[TradeRecord] = field(default_factory=list)
    aggs: list[AggRecord] = field(default_factory=list)

    @property
    def price(self) -> int:
        p = round((self.anchor / SCALE + self.offset) * 100) * TICK
        return max(p, TICK)


class Market:
    def __init__(self, symbols: tuple[str, ...], seed: int = 1, first_id: int = 1_000_000, history: int = 2_000_000):
        self.rng = random.Random(seed)
        self.history = history
        self.state: dict[str, SymbolState] = {}
        for i, s in enumerate(symbols):
            anchor, sigma, qty = DEFAULT_PROFILE.get(s, FALLBACK_PROFILE)
            st = SymbolState(s, int(anchor * SCALE), sigma, qty)
            # distinct id ranges per symbol and kind, like a real exchange
            st.next_trade_id = first_id * (i + 1)
            st.next_agg_id = first_id * (i + 1) // 2
            st.next_update_id = first_id * (i + 1) * 3
            self.state[s] = st

    def step(self, symbol: str, now_ms: int, cond: Conditions = Conditions()) -> list[tuple[str, dict]]:
        """One taker order on `symbol`: returns [(kind, payload), ...] in emission order."""
        st = self.state[symbol]
        rng = self.rng
        # mean-reverting walk: stationary stddev ~ sigma * volatility / sqrt(2 * theta)
        theta = 0.05
        st.offset = st.offset * (1 - theta) + rng.gauss(0.0, st.sigma * cond.volatility)
        price = st.price
        buyer_maker = rng.random() < 0.5
        events: list[tuple[str, dict]] = []
        n = rng.choice((1, 1, 1, 2, 3))
        first = st.next_trade_id
        total = 0
        for _ in range(n):
            qty = max(1, int(rng.lognormvariate(0.0, 0.5) * st.base_qty * cond.volume * SCALE))
            total += qty
            rec = TradeRecord(st.next_trade_id, price, qty, now_ms, buyer_maker)
            st.trades.append(rec)
            st.next_trade_id += 1
            events.append(("trade", trade_payload(symbol, rec)))
        agg = AggRecord(st.next_agg_id, price, total, first, st.next_trade_id - 1, now_ms, buyer_maker)
        st.aggs.append(agg)
        st.next_agg_id += 1
        events.append(("aggTrade", agg_payload(symbol, agg)))
        events.append(("bookTicker", self.book(symbol, cond)))
        if len(st.trades) > self.history:
            del st.trades[: len(st.trades) - self.history]
            del st.aggs[: max(0, len(st.aggs) - self.history)]
        return events

    def book(self, symbol: str, cond: Conditions = Conditions()) -> dict:
        st = self.state[symbol]
        rng = self.rng
        spread_ticks = max(1, round(rng.uniform(1.0, 2.0) * cond.spread))
        bid = st.price - (spread_ticks // 2) * TICK
        ask = bid + spread_ticks * TICK
        u = st.next_update_id
        st.next_update_id += 1
        return {
            "u": u,
            "s": symbol,
            "b": fmt(bid),
            "B": fmt(int(rng.uniform(0.1, 5) * SCALE)),
            "a": fmt(ask),
            "A": fmt(int(rng.uniform(0.1, 5) * SCALE)),
        }

    # ---------------------------------------------------------------- REST views of the history

    def trades_from(self, symbol: str, from_id: int | None, limit: int) -> list[dict]:
        trades = self.state[symbol].trades
        if not trades:
            return []
        start = len(trades) - limit if from_id is None else from_id - trades[0].id
        start = max(0, start)
        return [
            {
                "id": t.id,
                "price": fmt(t.price),
                "qty": fmt(t.qty),
                "quoteQty": fmt(t.price * t.qty // SCALE),
                "time": t.time,
                "isBuyerMaker": t.buyer_maker,
                "isBestMatch": True,
            }
            for t in trades[start : start + limit]
        ]

    def aggs_from(self, symbol: str, from_id: int | None, limit: int) -> list[dict]:
        aggs = self.state[symbol].aggs
        if not aggs:
            return []
        start = len(aggs) - limit if from_id is None else from_id - aggs[0].id
        start = max(0, start)
        return [
            {
                "a": a.id,
                "p": fmt(a.price),
                "q": fmt(a.qty),
                "f": a.first,
                "l": a.last,
                "T": a.time,
                "m": a.buyer_maker,
                "M": True,
            }
            for a in aggs[start : start + limit]
        ]


def trade_payload(symbol: str, t: TradeRecord) -> dict:
    return {
        "e": "trade",
        "E": t.time,
        "s": symbol,
        "t": t.id,
        "p": fmt(t.price),
        "q": fmt(t.qty),
        "T": t.time,
        "m": t.buyer_maker,
        "M": True,
    }


def agg_payload(symbol: str, a: AggRecord) -> dict:
    return {
        "e": "aggTrade",
        "E": a.time,
        "s": symbol,
        "a": a.id,
        "p": fmt(a.price),
        "q": fmt(a.qty),
        "f": a.first,
        "l": a.last,
        "T": a.time,
        "m": a.buyer_maker,
        "M": True,
    }
