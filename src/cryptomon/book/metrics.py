"""The liquidity metrics of a book, pure: each row the book stage makes (the book after the last diff of a
second of event time) is one sample, and the samples of a window (CRYPTOMON_BOOK_METRICS_SECONDS of event
time) add up into one row of `book_metrics`:

- mid `(bid + ask) / 2` and microprice `(bid·askQty + ask·bidQty) / (bidQty + askQty)`, at the window's
  last sample; the spread `ask − bid`, summed (for its mean, also in bps of the mid) and its maximum;
- the depth of each side within 10 bps and within 1 % of the mid, in quote currency (Σ price·qty of the
  levels in the band), summed over the samples whose band the book knows whole; and the imbalance within
  10 bps, `(bid − ask) / (bid + ask)`. A book knows a band whole when its snapshot reached past it (or
  held fewer levels than were asked for: the whole side): beyond
  the snapshot's deepest level a book holds only the levels that changed since (BTCUSDT's 1,000 levels
  reach ~0.33 % of its price: its 1 % band is never known whole, and is counted in none of its samples);
- the bookTicker checks made and the mismatches found while the window was open;
- `liquidity_drop`: the window's mean depth in the watched band (CRYPTOMON_LIQUIDITY_BAND, both sides)
  is below CRYPTOMON_LIQUIDITY_DROP_FRACTION of its median over the previous `LIQUIDITY_HISTORY` windows
  that knew it (at least `LIQUIDITY_MIN_HISTORY` of them): what the liquidity alert reads.

Every field is a sum, a count or the value at the last sample, so a window grows sample by sample and a
sample that comes again (a replay after a restart) is recognised by its update id and ignored: the rows
are the same whichever way the records were read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from cryptomon.binance.orderbook import OrderBook, Side

BAND_10BPS = Decimal("0.001")
BAND_1PCT = Decimal("0.01")
BPS = Decimal(10_000)
PLACES = Decimal("1e-12")  # bps and imbalances are kept to 12 decimals


LIQUIDITY_HISTORY = 60  # windows (30 minutes of 30-second windows) the trailing median is taken over
LIQUIDITY_MIN_HISTORY = 10
BANDS = ("10bps", "1pct")


class Sample(NamedTuple):
    mid: Decimal
    microprice: Decimal
    spread: Decimal
    depth_10bps: tuple[Decimal, Decimal] | None  # (bid, ask) in quote currency; None: not known whole
    depth_1pct: tuple[Decimal, Decimal] | None


def depth_within(side: Side, band: str, bound: Decimal, known: Decimal | None) -> Decimal | None:
    """Σ price·qty of the side's levels from the best down to `bound` (bids) or up to it (asks), the side
    keeping it for `band` from one sample to the next; None when the book's snapshot did not reach `bound`
    (`known`: its deepest price)."""
    if known is None or (known > bound if side.bids else known < bound):
        return None
    return side.within(band, bound)


def sample(book: OrderBook) -> Sample | None:
    """The book's sample (None when a side is empty)."""
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return None
    bp, bq, ap, aq = Decimal(bid[0]), Decimal(bid[1]), Decimal(ask[0]), Decimal(ask[1])
    mid = (bp + ap) / 2
    bands = []
    for name, band in zip(BANDS, (BAND_10BPS, BAND_1PCT), strict=True):
        b = depth_within(book.bids, name, mid * (1 - band), book.known_bid)
        a = depth_within(book.asks, name, mid * (1 + band), book.known_ask)
        bands.append(None if b is None or a is None else (b, a))
    return Sample(mid, (bp * aq + ap * bq) / (bq + aq), ap - bp, bands[0], bands[1])


@dataclass
class Window:
    """One row of book_metrics as its samples so far."""

    symbol: str
    start_ms: int
    last_update_id: int = 0  # of the last sample: one at or below it is a replay
    samples: int = 0
    mid: Decimal = Decimal(0)
    microprice: Decimal = Decimal(0)
    spread_sum: Decimal = Decimal(0)
    spread_bps_sum: Decimal = Decimal(0)
    spread_max: Decimal = Decimal(0)
    depth_10bps_samples: int = 0
    bid_10bps_sum: Decimal = Decimal(0)
    ask_10bps_sum: Decimal = Decimal(0)
    imbalance_10bps_sum: Decimal = Decimal(0)
    depth_1pct_samples: int = 0
    bid_1pct_sum: Decimal = Decimal(0)
    ask_1pct_sum: Decimal = Decimal(0)
    checks: int = 0
    mismatches: int = 0
    liquidity_drop: bool = False

    def depth(self, band: str) -> Decimal | None:
        """Mean depth of both sides within `band` over the samples that knew it whole (None: none did)."""
        if band == "10bps":
            n, total = self.depth_10bps_samples, self.bid_10bps_sum + self.ask_10bps_sum
        else:
            n, total = self.depth_1pct_samples, self.bid_1pct_sum + self.ask_1pct_sum
        return total / n if n else None

    def add(self, s: Sample, update_id: int, checks: int, mismatches: int) -> None:
        self.last_update_id = update_id
        self.samples += 1
        self.mid, self.microprice = s.mid, s.microprice
        self.spread_sum += s.spread
        self.spread_bps_sum += (s.spread / s.mid * BPS).quantize(PLACES)
        self.spread_max = max(self.spread_max, s.spread)
        if s.depth_10bps is not None:
            b, a = s.depth_10bps
            self.depth_10bps_samples += 1
            self.bid_10bps_sum += b
            self.ask_10bps_sum += a
            if b + a:
                self.imbalance_10bps_sum += ((b - a) / (b + a)).quantize(PLACES)
        if s.depth_1pct is not None:
            b, a = s.depth_1pct
            self.depth_1pct_samples += 1
            self.bid_1pct_sum += b
            self.ask_1pct_sum += a
        self.checks += checks
        self.mismatches += mismatches

    def row(self) -> tuple:
        """The values of book_metrics, in its columns' order (store.METRICS_SQL)."""
        return (self.start_ms, self.symbol, self.last_update_id, self.samples, self.mid, self.microprice,
                self.spread_sum, self.spread_bps_sum, self.spread_max, self.depth_10bps_samples, self.bid_10bps_sum,
                self.ask_10bps_sum, self.imbalance_10bps_sum, self.depth_1pct_samples, self.bid_1pct_sum,
                self.ask_1pct_sum, self.checks, self.mismatches, self.liquidity_drop)  # fmt: skip

    @classmethod
    def from_row(cls, row: tuple) -> Window:
        start_ms, symbol, *rest = row
        return cls(symbol, start_ms, *rest)


class LiquidityWatch:
    """Per symbol, the mean depths of its last closed windows in the band, and the drop flag."""

    def __init__(self, band: str = "10bps", fraction: Decimal = Decimal("0.5")):
        if band not in BANDS:
            raise ValueError(f"band: one of {BANDS}")
        self.band, self.fraction = band, fraction
        self.history: dict[str, deque[Decimal]] = {}

    def closed(self, window: Window) -> None:
        """A window that is over (a later one started): its depth joins the history."""
        if (d := window.depth(self.band)) is not None:
            self.history.setdefault(window.symbol, deque(maxlen=LIQUIDITY_HISTORY)).append(d)

    def flag(self, window: Window) -> bool:
        past = self.history.get(window.symbol)
        now = window.depth(self.band)
        if now is None or past is None or len(past) < LIQUIDITY_MIN_HISTORY:
            return False
        ordered = sorted(past)
        n = len(ordered)
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        return now < self.fraction * median
