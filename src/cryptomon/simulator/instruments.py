"""The simulator's instruments (pure): what `/api/v3/exchangeInfo` lists and how each symbol trades.

Prices and quantities are integers in units of 1e-8, Binance's 8 decimals, so every value is exact.
The three default symbols keep the profiles the tests were written against; PEPEUSDT is a memecoin
(price ~0.0000081, quantities up to 1e11); `whole_market()` adds a deterministic spread of USDT pairs
with prices from 1e-8 to 1e5, as the whole Binance spot market has.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from cryptomon.binance import limits

SCALE = 10**8


def fmt(units: int) -> str:
    """Units of 1e-8 as Binance writes decimals: '97000.01000000', '0.00000812'."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // SCALE}.{units % SCALE:08d}"


@dataclass(frozen=True)
class Instrument:
    """One listed symbol as exchangeInfo describes it: assets, anchor price, tick size and lot step (integer units)."""

    symbol: str
    base: str
    quote: str
    anchor: int  # the price the market reverts to, units
    tick: int  # PRICE_FILTER tickSize, units
    step: int  # LOT_SIZE stepSize, units
    min_qty: int  # LOT_SIZE minQty, units
    max_qty: int  # LOT_SIZE maxQty, units
    sigma: float  # per-trade price step stddev, in the quote asset
    qty: float  # typical trade quantity, in the base asset
    book_qty: float = 1.0  # scale of the bookTicker's quantities, in the base asset
    status: str = "TRADING"

    def exchange_info(self) -> dict:
        """This symbol as `/api/v3/exchangeInfo` lists it (PRICE_FILTER first: cryptofeed reads the tick
        size from the first filter)."""
        return {
            "symbol": self.symbol,
            "status": self.status,
            "baseAsset": self.base,
            "baseAssetPrecision": 8,
            "quoteAsset": self.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": [
                "LIMIT",
                "LIMIT_MAKER",
                "MARKET",
                "STOP_LOSS",
                "STOP_LOSS_LIMIT",
                "TAKE_PROFIT",
                "TAKE_PROFIT_LIMIT",
            ],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "amendAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": fmt(self.tick),
                    "maxPrice": fmt(10_000_000 * SCALE),
                    "tickSize": fmt(self.tick),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": fmt(self.min_qty),
                    "maxQty": fmt(self.max_qty),
                    "stepSize": fmt(self.step),
                },
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": fmt(0),
                    "maxQty": fmt(self.max_qty // 10),
                    "stepSize": fmt(0),
                },
                {
                    "filterType": "TRAILING_DELTA",
                    "minTrailingAboveDelta": 10,
                    "maxTrailingAboveDelta": 2000,
                    "minTrailingBelowDelta": 10,
                    "maxTrailingBelowDelta": 2000,
                },
                {
                    "filterType": "PERCENT_PRICE_BY_SIDE",
                    "bidMultiplierUp": "5",
                    "bidMultiplierDown": "0.2",
                    "askMultiplierUp": "5",
                    "askMultiplierDown": "0.2",
                    "avgPriceMins": 5,
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": "5.00000000",
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"],
        }


def _units(x: float) -> int:
    return round(x * SCALE)


KNOWN = {
    i.symbol: i
    for i in (
        Instrument("BTCUSDT", "BTC", "USDT", _units(97_000), _units(0.01), _units(0.00001), _units(0.00001),
                   _units(9000), 0.08, 0.02),
        Instrument("ETHUSDT", "ETH", "USDT", _units(3_400), _units(0.01), _units(0.0001), _units(0.0001),
                   _units(9000), 0.05, 0.4),
        Instrument("BNBUSDT", "BNB", "USDT", _units(650), _units(0.01), _units(0.001), _units(0.001),
                   _units(9000), 0.03, 2.0),
        # PEPEUSDT's real LOT_SIZE allows up to ~9.2e10; quantities here reach 1e11 with a volume spike
        Instrument("PEPEUSDT", "PEPE", "USDT", 812, 1, _units(1), _units(1), _units(100_000_000_000),
                   0.00000002, 5_000_000.0, 50_000_000.0),
    )
}  # fmt: skip


def instrument(symbol: str) -> Instrument:
    """A known symbol's profile, or a plain 100-USDT market for any other name."""
    if symbol in KNOWN:
        return KNOWN[symbol]
    base = symbol.removesuffix("USDT") or symbol
    return Instrument(symbol, base, "USDT", _units(100), _units(0.01), _units(0.001), _units(0.001),
                      _units(900_000), 0.02, 5.0)  # fmt: skip


def whole_market(n: int = 400, seed: int = 7, inactive: int = 4) -> dict[str, Instrument]:
    """About `n` TRADING USDT pairs (the known ones first) with prices spread log-uniformly from 1e-8 to
    1e5, each with a tick of ~1e-7 of its price (at least 1e-8) and typical trades of ~200 USDT; plus `inactive` symbols in
    BREAK, which exchangeInfo lists and a `*USDT` pattern must leave out. Deterministic for a seed."""
    rng = random.Random(seed)
    out = dict(KNOWN)
    i = 0
    while len(out) < n + inactive:
        name = _name(i)
        i += 1
        symbol = f"{name}USDT"
        if symbol in out:
            continue
        price = 10 ** rng.uniform(-7.6, 5.0)
        tick = 10 ** max(0, round(math.log10(price * SCALE)) - 7)  # ~1e-7 of the price, as BTC's 0.01
        anchor = max(tick, round(price * SCALE / tick) * tick)
        qty = 200.0 / price
        step = max(1, 10 ** max(0, min(8, round(math.log10(qty * SCALE)) - 3)))
        max_qty = min(_units(100_000_000_000), max(_units(9000), round(qty * 1e5) * SCALE))
        status = "BREAK" if len(out) >= n else "TRADING"
        out[symbol] = Instrument(symbol, name, "USDT", anchor, tick, step, step, max_qty // step * step,
                                 sigma=price * 2e-5, qty=qty, book_qty=qty * 20, status=status)  # fmt: skip
    return out


def _name(i: int) -> str:
    """Distinct, deterministic asset names: AAA, AAB, ... (three to four letters)."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    i += 26 * 26  # at least three letters
    while i:
        i, r = divmod(i, 26)
        out = letters[r] + out
    return out


def exchange_info(instruments: dict[str, Instrument], server_time: int, weight_limit: int) -> dict:
    return {
        "timezone": "UTC",
        "serverTime": server_time,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": weight_limit},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {
                "rateLimitType": "RAW_REQUESTS",
                "interval": "MINUTE",
                "intervalNum": 5,
                "limit": limits.RAW_REQUESTS_PER_5_MINUTES,
            },
        ],
        "exchangeFilters": [],
        "symbols": [i.exchange_info() for i in instruments.values()],
    }
