"""A seeded market model for the exchange simulator (pure: no I/O, no clock), in integer units of 1e-8 so
formatting is exact, with bounded history (docs/design.md).
"""

from __future__ import annotations

import random
import zlib
from array import array
from collections import deque
from dataclasses import dataclass, field

from cryptomon.binance.schema import AGG_TRADE, BOOK_TICKER_EVENT, TRADE
from cryptomon.simulator.instruments import SCALE, Instrument, fmt, instrument

__all__ = ["SCALE", "Conditions", "Market", "fmt"]

KLINE_MS = 60_000
KLINES_KEPT = 1440  # 24 hours of 1-minute klines: ticker/24hr and klines are served from them


@dataclass(frozen=True)
class Conditions:
    """Multipliers a scenario phase applies to the calm market."""

    volatility: float = 1.0
    volume: float = 1.0
    spread: float = 1.0


TRADES_PER_STEP = (1, 1, 1, 2, 3)  # a step's taker order fills 1-3 makers: 1.6 trades on average


class Ring:
    """The last `capacity` rows of consecutive ids, in fixed-size arrays: row of id i at i % capacity."""

    def __init__(self, capacity: int, columns: str):
        self.capacity = capacity
        self.cols = [array(code, bytes(array(code).itemsize * capacity)) for code in columns]
        self.first = 0  # oldest id held
        self.next = 0  # next id to be appended

    def append(self, id_: int, *values: int) -> None:
        if self.next == self.first == 0:
            self.first = self.next = id_
        at = id_ % self.capacity
        for col, v in zip(self.cols, values, strict=True):
            col[at] = v
        self.next = id_ + 1
        self.first = max(self.first, self.next - self.capacity)

    def ids(self, from_id: int | None, limit: int) -> range:
        """Ids of up to `limit` rows from `from_id` (inclusive), or the newest `limit` ones."""
        if self.next == self.first:
            return range(0)
        start = self.next - limit if from_id is None else from_id
        start = max(start, self.first)
        return range(start, min(self.next, start + limit))

    def row(self, id_: int) -> tuple[int, ...]:
        at = id_ % self.capacity
        return tuple(col[at] for col in self.cols)


@dataclass
class Kline:
    """One 1-minute candle, in integer units."""

    open_time: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0  # units
    quote_volume: int = 0  # units
    trades: int = 0
    taker_buy_volume: int = 0
    taker_buy_quote: int = 0
    first_id: int = -1
    last_id: int = -1

    def add(self, trade_id: int, price: int, qty: int, buyer_maker: bool) -> None:
        self.high, self.low, self.close = max(self.high, price), min(self.low, price), price
        quote = price * qty // SCALE
        self.volume += qty
        self.quote_volume += quote
        self.trades += 1
        if not buyer_maker:  # the taker bought
            self.taker_buy_volume += qty
            self.taker_buy_quote += quote
        if self.first_id < 0:
            self.first_id = trade_id
        self.last_id = trade_id

    def rest_row(self) -> list:
        """A row of /api/v3/klines."""
        return [self.open_time, fmt(self.open), fmt(self.high), fmt(self.low), fmt(self.close), fmt(self.volume),
                self.open_time + KLINE_MS - 1, fmt(self.quote_volume), self.trades, fmt(self.taker_buy_volume),
                fmt(self.taker_buy_quote), "0"]  # fmt: skip


@dataclass
class SymbolState:
    """One symbol's market: price offset, next ids, bounded trade and aggTrade history, its book."""

    inst: Instrument
    trades: Ring
    aggs: Ring
    offset: float = 0.0  # price - anchor, in the quote asset
    next_trade_id: int = 1
    next_agg_id: int = 1
    next_update_id: int = 1
    last_update_id: int = 0  # the id of the last book change (depth's lastUpdateId)
    bid: int = 0
    ask: int = 0
    bid_qty: int = 0
    ask_qty: int = 0
    klines: deque[Kline] = field(default_factory=lambda: deque(maxlen=KLINES_KEPT))
    last_trade_time: int = 0
    # while someone follows the depth stream: the best bid and ask (price, quantity) of every book the
    # symbol had since the last diff, so that the next diff holds the best levels it had in between, and the
    # book at the last diff (None before the first), against which the next one holds what changed
    depth_watched: bool = False
    visited: deque[tuple[int, int, int, int]] = field(default_factory=lambda: deque(maxlen=10_000))
    depth_sent: tuple[int, int, int, int] | None = None
    level_qty: dict[int, int] = field(default_factory=dict)  # a level's quantity below the best, by price

    @property
    def symbol(self) -> str:
        return self.inst.symbol

    @property
    def price(self) -> int:
        tick = self.inst.tick
        p = round((self.inst.anchor / SCALE + self.offset) / (tick / SCALE)) * tick
        return max(p, tick)


class Market:
    """The seeded market model: each step of a symbol yields its trades, aggTrades and bookTicker updates."""

    def __init__(
        self,
        symbols: tuple[str, ...],
        seed: int = 1,
        first_id: int = 1_000_000,
        history: int = 100_000,
        instruments: dict[str, Instrument] | None = None,
    ):
        self.rng = random.Random(seed)
        self.history = history
        self.state: dict[str, SymbolState] = {}
        for i, s in enumerate(symbols):
            inst = (instruments or {}).get(s) or instrument(s)
            # trades: id, price, qty, time, buyer_maker; aggs: id, price, qty, first, last, time, buyer_maker
            st = SymbolState(inst, Ring(history, "qQqb"), Ring(history, "qQqqqb"))
            # distinct id ranges per symbol and kind, like a real exchange
            st.next_trade_id = first_id * (i + 1)
            st.next_agg_id = first_id * (i + 1) // 2
            st.next_update_id = first_id * (i + 1) * 3
            # a quote before the first step (REST answers from the start), without drawing from the rng
            st.bid, st.ask = st.price - inst.tick, st.price
            st.bid_qty = st.ask_qty = max(inst.step, round(inst.book_qty * SCALE) // inst.step * inst.step)
            self.state[s] = st

    def step(self, symbol: str, now_ms: int, cond: Conditions = Conditions()) -> list[tuple[str, dict]]:
        """One taker order on `symbol`: returns [(kind, payload), ...] in emission order."""
        st = self.state[symbol]
        inst = st.inst
        rng = self.rng
        # mean-reverting walk: stationary stddev ~ sigma * volatility / sqrt(2 * theta)
        theta = 0.05
        st.offset = st.offset * (1 - theta) + rng.gauss(0.0, inst.sigma * cond.volatility)
        price = st.price
        buyer_maker = rng.random() < 0.5
        events: list[tuple[str, dict]] = []
        n = rng.choice(TRADES_PER_STEP)
        first = st.next_trade_id
        total = 0
        kline = self._kline(st, now_ms, price)
        for _ in range(n):
            qty = max(1, int(rng.lognormvariate(0.0, 0.5) * inst.qty * cond.volume * SCALE))
            qty = min(inst.max_qty, max(inst.min_qty, qty // inst.step * inst.step))
            total += qty
            tid = st.next_trade_id
            st.trades.append(tid, price, qty, now_ms, buyer_maker)
            kline.add(tid, price, qty, buyer_maker)
            st.next_trade_id += 1
            events.append((TRADE, trade_payload(symbol, tid, price, qty, now_ms, buyer_maker)))
        agg = (st.next_agg_id, price, total, first, st.next_trade_id - 1, now_ms, buyer_maker)
        st.aggs.append(*agg)
        st.next_agg_id += 1
        st.last_trade_time = now_ms
        events.append((AGG_TRADE, agg_payload(symbol, *agg)))
        events.append((BOOK_TICKER_EVENT, self.book(symbol, cond)))
        return events

    def book(self, symbol: str, cond: Conditions = Conditions()) -> dict:
        """A quote update: the best bid and ask move around the last price; returns the bookTicker payload."""
        st = self.state[symbol]
        inst = st.inst
        rng = self.rng
        if st.depth_watched and st.bid:
            st.visited.append((st.bid, st.bid_qty, st.ask, st.ask_qty))
        spread_ticks = max(1, round(rng.uniform(1.0, 2.0) * cond.spread))
        st.bid = st.price - (spread_ticks // 2) * inst.tick
        st.ask = st.bid + spread_ticks * inst.tick
        st.bid_qty = max(inst.step, int(rng.uniform(0.1, 5) * inst.book_qty * SCALE) // inst.step * inst.step)
        st.ask_qty = max(inst.step, int(rng.uniform(0.1, 5) * inst.book_qty * SCALE) // inst.step * inst.step)
        u = st.next_update_id
        st.next_update_id += 1
        st.last_update_id = u
        return {"u": u, "s": symbol, "b": fmt(st.bid), "B": fmt(st.bid_qty), "a": fmt(st.ask), "A": fmt(st.ask_qty)}

    def _kline(self, st: SymbolState, now_ms: int, price: int) -> Kline:
        open_time = now_ms - now_ms % KLINE_MS
        if not st.klines or st.klines[-1].open_time != open_time:
            if st.klines and st.klines[-1].open_time > open_time:
                return st.klines[-1]  # a clock that went back (scripted runs): keep the newest kline
            st.klines.append(Kline(open_time, price, price, price, price))
        return st.klines[-1]

    # ---------------------------------------------------------------- REST views

    def trades_from(self, symbol: str, from_id: int | None, limit: int) -> list[dict]:
        ring = self.state[symbol].trades
        rows = []
        for tid in ring.ids(from_id, limit):
            price, qty, time, maker = ring.row(tid)
            rows.append({"id": tid, "price": fmt(price), "qty": fmt(qty), "quoteQty": fmt(price * qty // SCALE),
                         "time": time, "isBuyerMaker": bool(maker), "isBestMatch": True})  # fmt: skip
        return rows

    def aggs_from(
        self, symbol: str, from_id: int | None, limit: int, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[dict]:
        ring = self.state[symbol].aggs
        ids = ring.ids(from_id, limit if start_ms is None else ring.capacity)
        rows = []
        for aid in ids:
            price, qty, first, last, time, maker = ring.row(aid)
            if start_ms is not None and time < start_ms:
                continue
            if end_ms is not None and time > end_ms:
                break
            rows.append({"a": aid, "p": fmt(price), "q": fmt(qty), "f": first, "l": last, "T": time, "m": bool(maker),
                         "M": True})  # fmt: skip
            if len(rows) >= limit:
                break
        return rows

    def klines(self, symbol: str, start_ms: int | None, end_ms: int | None, limit: int) -> list[list]:
        rows = [
            k
            for k in self.state[symbol].klines
            if (start_ms is None or k.open_time >= start_ms) and (end_ms is None or k.open_time <= end_ms)
        ]
        rows = rows[:limit] if start_ms is not None else rows[-limit:]
        return [k.rest_row() for k in rows]

    def kline_event(self, symbol: str, now_ms: int) -> dict | None:
        """The `<symbol>@kline_1m` payload of the current minute's kline."""
        st = self.state[symbol]
        if not st.klines:
            return None
        k = st.klines[-1]
        return {
            "e": "kline", "E": now_ms, "s": symbol,
            "k": {"t": k.open_time, "T": k.open_time + KLINE_MS - 1, "s": symbol, "i": "1m", "f": k.first_id,
                  "L": k.last_id, "o": fmt(k.open), "c": fmt(k.close), "h": fmt(k.high), "l": fmt(k.low),
                  "v": fmt(k.volume), "n": k.trades, "x": now_ms >= k.open_time + KLINE_MS,
                  "q": fmt(k.quote_volume), "V": fmt(k.taker_buy_volume), "Q": fmt(k.taker_buy_quote), "B": "0"},
        }  # fmt: skip

    def ticker_24hr(self, symbol: str, now_ms: int, mini: bool = False) -> dict:
        """The rolling 24-hour statistics, from the kept one-minute klines."""
        st = self.state[symbol]
        ks = [k for k in st.klines if k.open_time > now_ms - 24 * 3600_000]
        last = st.price if not ks else ks[-1].close
        open_ = ks[0].open if ks else last
        volume = sum(k.volume for k in ks)
        quote = sum(k.quote_volume for k in ks)
        traded = [k for k in ks if k.trades]
        out = {
            "symbol": symbol,
            "openPrice": fmt(open_),
            "highPrice": fmt(max((k.high for k in ks), default=last)),
            "lowPrice": fmt(min((k.low for k in ks), default=last)),
            "lastPrice": fmt(last),
            "volume": fmt(volume),
            "quoteVolume": fmt(quote),
            "openTime": now_ms - 24 * 3600_000,
            "closeTime": now_ms,
            "firstId": traded[0].first_id if traded else -1,
            "lastId": traded[-1].last_id if traded else -1,
            "count": sum(k.trades for k in ks),
        }
        if mini:
            return out
        change = last - open_
        last_qty = st.trades.row(st.trades.next - 1)[1] if st.trades.next > st.trades.first else 0
        return {
            "symbol": symbol,
            "priceChange": fmt(change),
            "priceChangePercent": f"{(change / open_ * 100) if open_ else 0:.3f}",
            "weightedAvgPrice": fmt(quote * SCALE // volume if volume else last),
            "prevClosePrice": fmt(open_),
            "lastPrice": fmt(last),
            "lastQty": fmt(last_qty),
            "bidPrice": fmt(st.bid),
            "bidQty": fmt(st.bid_qty),
            "askPrice": fmt(st.ask),
            "askQty": fmt(st.ask_qty),
            **{k: v for k, v in out.items() if k not in ("symbol", "lastPrice")},
        }

    def avg_price(self, symbol: str, minutes: int = 5) -> dict:
        st = self.state[symbol]
        ks = list(st.klines)[-minutes:]
        volume = sum(k.volume for k in ks)
        price = sum(k.quote_volume for k in ks) * SCALE // volume if volume else st.price
        return {"mins": minutes, "price": fmt(price), "closeTime": st.last_trade_time}

    def last_price(self, symbol: str) -> str:
        st = self.state[symbol]
        ring = st.trades
        return fmt(ring.row(ring.next - 1)[0] if ring.next > ring.first else st.price)

    def book_ticker(self, symbol: str) -> dict:
        st = self.state[symbol]
        return {"symbol": symbol, "bidPrice": fmt(st.bid), "bidQty": fmt(st.bid_qty), "askPrice": fmt(st.ask),
                "askQty": fmt(st.ask_qty)}  # fmt: skip

    def depth_levels(self, symbol: str, limit: int) -> tuple[list[list[str]], list[list[str]]]:
        """The book's top `limit` levels of each side (it holds BOOK_LEVELS): the best bid and ask with the
        bookTicker's quantities, and below them a level at every tick whose quantity depends only on its
        price."""
        st = self.state[symbol]
        st.depth_watched = True  # a client syncing from this snapshot needs the diffs of every book after it
        bids, asks = self._ranges(st, st.bid, st.ask)
        return ([[fmt(p), self._quantity(st, p, bids, st.bid, st.bid_qty)] for p in bids[::-1][:limit]],
                [[fmt(p), self._quantity(st, p, asks, st.ask, st.ask_qty)] for p in asks[:limit]])  # fmt: skip

    def depth_snapshot(self, symbol: str, limit: int) -> dict:
        """`/api/v3/depth`'s answer: the top `limit` levels a side and the update id they stand at."""
        bids, asks = self.depth_levels(symbol, limit)
        return {"lastUpdateId": self.state[symbol].last_update_id, "bids": bids, "asks": asks}

    def depth_diff(self, symbol: str) -> tuple[list[list[str]], list[list[str]]]:
        """Every level that changed since the last call, as Binance's diffs hold them: the quantity it has
        now, 0 for one the book no longer holds. A snapshot may have been taken at any book in between, so
        "changed" is against each of them: every level some book since the last diff held but not all of
        them did, and every best level among them (below the best a level's quantity depends on its price
        alone). The books' prices are ranges, so a diff costs the levels that moved, not a pass over every
        book in between (400 symbols × 10 a second)."""
        st = self.state[symbol]
        visited, st.visited = st.visited, deque(maxlen=10_000)
        st.depth_watched = True
        bids, asks = self._ranges(st, st.bid, st.ask)
        sent, st.depth_sent = st.depth_sent, (st.bid, st.bid_qty, st.ask, st.ask_qty)
        books = [(b, a) for b, _, a, _ in visited]
        if sent is not None:
            books.append((sent[0], sent[2]))
        if sent is None and not visited:  # the first diff, no snapshot before it: the whole book
            touched_b, touched_a = set(bids), set(asks)
        else:
            touched_b, touched_a = self._changed(st, [*{b for b, _ in books}, st.bid], [*{a for _, a in books}, st.ask])
        return ([[fmt(p), self._quantity(st, p, bids, st.bid, st.bid_qty)] for p in sorted(touched_b, reverse=True)],
                [[fmt(p), self._quantity(st, p, asks, st.ask, st.ask_qty)] for p in sorted(touched_a)])  # fmt: skip

    def _quantity(self, st: SymbolState, price: int, book: range, best: int, best_qty: int) -> str:
        """A level's quantity now on the side whose prices are `book`: the best one's is the bookTicker's
        (`best_qty`), one below it depends on its price alone, "0" outside the book."""
        return fmt(best_qty if price == best else self._level_qty(st, price) if price in book else 0)

    def _changed(self, st: SymbolState, best_bids: list[int], best_asks: list[int]) -> tuple[set[int], set[int]]:
        """The levels not held alike by every book with these best bids and asks: those some held and
        others did not (the union of their prices less the prices all held) and the best ones."""
        out = []
        for bests, side in ((best_bids, 0), (best_asks, 1)):
            ranges = [self._ranges(st, p, p)[side] for p in bests]
            union: set[int] = set(bests)
            for r in ranges:
                union.update(r)
            common = range(max(r.start for r in ranges), min(r.stop for r in ranges), st.inst.tick)
            out.append((union - set(common)) | set(bests))
        return out[0], out[1]

    @staticmethod
    def _ranges(st: SymbolState, bid: int, ask: int) -> tuple[range, range]:
        """The prices of the book with that best bid and ask: BOOK_LEVELS a side, a level at every tick,
        bids above 0."""
        tick = st.inst.tick
        lowest = bid - min(BOOK_LEVELS - 1, (bid - 1) // tick) * tick
        return range(lowest, bid + 1, tick), range(ask, ask + BOOK_LEVELS * tick, tick)

    @staticmethod
    def _level_qty(st: SymbolState, price: int) -> int:
        known = st.level_qty.get(price)
        if known is not None:
            return known
        if len(st.level_qty) >= LEVEL_QTY_CACHE:  # the price wandered off: start over around where it is
            st.level_qty.clear()
        h = zlib.crc32(f"{st.symbol}:{price}".encode())
        qty = st.level_qty[price] = max(
            st.inst.step, int((0.2 + (h % 1000) / 200) * st.inst.book_qty * SCALE) // st.inst.step * st.inst.step
        )
        return qty


LEVEL_QTY_CACHE = 4096  # levels' quantities kept per symbol (a book is 2 × BOOK_LEVELS of them)
BOOK_LEVELS = 20  # levels a side the simulator's books hold (its depth stream and snapshots cover all of them)


def trade_payload(symbol: str, tid: int, price: int, qty: int, time: int, buyer_maker: bool) -> dict:
    return {"e": TRADE, "E": time, "s": symbol, "t": tid, "p": fmt(price), "q": fmt(qty), "T": time,
            "m": buyer_maker, "M": True}  # fmt: skip


def agg_payload(symbol: str, aid: int, price: int, qty: int, first: int, last: int, time: int, maker: bool) -> dict:
    return {"e": AGG_TRADE, "E": time, "s": symbol, "a": aid, "p": fmt(price), "q": fmt(qty), "f": first, "l": last,
            "T": time, "m": maker, "M": True}  # fmt: skip
