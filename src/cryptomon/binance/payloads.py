"""The contract's fast path for the ingestion, in C: a combined-stream frame (`{"stream":..,"data":..}`)
decoded by msgspec, its payload into a typed struct of the stream's kind whose constraints are a subset of
the contract's (`schema.validate_payload` for trades, aggTrades and bookTickers, `DepthDiff.from_payload`
for depth diffs): exact JSON types, ids in 0..MAX_ID, times from Binance's first year, the ASCII decimal
patterns with prices (and trade quantities) above zero, no field the kind does not have, the stream's
symbol, at most DEPTH_LEVELS_MAX levels a side of exactly [price, quantity].

The payload's JSON is kept as the exchange sent it (msgspec.Raw), so that the Kafka value is those bytes
with `,"ingestion_timestamp":N` before the closing brace: no dict is built and nothing is serialised again.
A frame this accepts, the contract accepts with the same event and the same Kafka value once parsed
(property-tested in tests/unit/test_binance_payloads.py); for anything else `decode_frame` returns None
and the caller asks the contract, which accepts it or says why not (its reason is the dead letter's).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from cryptomon.binance import limits
from cryptomon.binance.schema import AGG_TRADE, BOOK_TICKER_EVENT, DEPTH, PRICE, QUANTITY, SYMBOL, TRADE
from cryptomon.binance.streams import split_stream

Id = Annotated[int, Meta(ge=0, le=limits.MAX_ID)]
# the upper bound that matters is the caller's (the ingestion time plus the skew); MAX_ID keeps it an int
# orjson reads as one (past 64 bits it reads a float, which the contract refuses)
Millis = Annotated[int, Meta(ge=limits.FIRST_EVENT_MS, le=limits.MAX_ID)]
Levels = Annotated[list[tuple[str, str]], Meta(max_length=limits.DEPTH_LEVELS_MAX)]


class Frame(Struct, forbid_unknown_fields=True, frozen=True):
    """The combined stream's envelope; the payload stays undecoded until the stream says its kind."""

    stream: str
    data: Raw


class TradeFields(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What a trade and an aggTrade payload both have (records.py adds what the ingestion writes to Kafka)."""

    s: str
    p: str
    q: str
    T: Millis
    m: bool
    E: int | None = None
    M: bool | None = None


class TradePayload(TradeFields, frozen=True, kw_only=True):
    e: Literal["trade"]
    t: Id


class AggTradePayload(TradeFields, frozen=True, kw_only=True):
    e: Literal["aggTrade"]
    a: Id
    f: Id
    l: Id  # noqa: E741 (Binance's name)


class BookTickerPayload(Struct, forbid_unknown_fields=True, frozen=True):
    u: Id
    s: str
    b: str
    B: str
    a: str
    A: str


class DepthPayload(Struct, forbid_unknown_fields=True, frozen=True):
    e: Literal["depthUpdate"]
    E: Millis
    s: str
    U: Id
    u: Id
    b: Levels
    a: Levels


_ENVELOPE = msgspec.json.Decoder(Frame)
_TRADES: dict[str, msgspec.json.Decoder[TradePayload] | msgspec.json.Decoder[AggTradePayload]] = {
    TRADE: msgspec.json.Decoder(TradePayload),
    AGG_TRADE: msgspec.json.Decoder(AggTradePayload),
}
_BOOK_TICKER = msgspec.json.Decoder(BookTickerPayload)
_DEPTH = msgspec.json.Decoder(DepthPayload)
NONZERO = r"(?=[0.]*+[1-9])"  # before a decimal the pattern allows: it has a digit other than 0
# each kind's strings checked in one regex call ("|" is in none of them, so the whole matches exactly when
# each part does; for a list of levels, whose number of parts the pattern does not fix, only when the
# string also has as many separators as the parts need: two strings with a "|" inside would keep the count
# of parts even)
_TRADE_STRINGS = re.compile(rf"{NONZERO}(?:{PRICE.pattern})\|{NONZERO}(?:{QUANTITY.pattern})")
_BOOK_STRINGS = re.compile(rf"(?:{PRICE.pattern})\|(?:{QUANTITY.pattern})\|(?:{PRICE.pattern})\|(?:{QUANTITY.pattern})")
_LEVEL = rf"{NONZERO}(?:{PRICE.pattern})\|(?:{QUANTITY.pattern})"
_LEVELS = re.compile(rf"(?:{_LEVEL}(?:\|{_LEVEL})*+)?+")


def levels_ok(levels: list) -> bool:
    """Every level of `levels` (each a [price, quantity] pair of strings) as the contract wants it (Binance's
    decimals, a price not zero), in one regex call. Raises TypeError for an item that is not a string."""
    joined = "|".join(map("|".join, levels))
    return joined.count("|") == max(2 * len(levels) - 1, 0) and _LEVELS.fullmatch(joined) is not None


class Validated(Struct, frozen=True):
    """A frame the typed path accepted: its event (`first` is a depth diff's U, else the id) and the payload's
    JSON as received (a Struct: made in 0.1 µs, a frozen dataclass takes 1.1)."""

    kind: str
    symbol: str
    seq: int
    first: int
    payload: bytes

    def value(self, ingestion_ms: int) -> bytes:
        """The Kafka message value: the payload with the ingestion timestamp (epoch ms) as its last field."""
        return b'%b,"ingestion_timestamp":%d}' % (self.payload[:-1], ingestion_ms)


def decode_frame(
    raw: bytes | str, symbols: frozenset[str], latest_ms: int, depth_stream: str | None
) -> Validated | None:
    """The frame as Validated, or None when only the contract can say (see the module). `latest_ms`: the
    latest acceptable event time; `depth_stream`: the depth stream followed, None when the book is off.
    Frames above MAX_MARKET_FRAME_BYTES (only depth diffs may be) are the contract's."""
    if len(raw) > limits.MAX_MARKET_FRAME_BYTES:
        return None
    try:
        frame = _ENVELOPE.decode(raw)
        symbol, kind = split_stream(frame.stream)
        if symbol not in symbols or SYMBOL.fullmatch(symbol) is None:
            return None
        payload = bytes(frame.data)
        if kind == depth_stream:
            d = _DEPTH.decode(payload)
            fit = d.u >= d.U and latest_ms >= d.E and levels_ok(d.b + d.a)
            return Validated(DEPTH, symbol, d.u, d.U, payload) if fit and d.s == symbol else None
        if kind == BOOK_TICKER_EVENT:
            k = _BOOK_TICKER.decode(payload)
            ok = _BOOK_STRINGS.fullmatch(f"{k.b}|{k.B}|{k.a}|{k.A}")
            return Validated(kind, symbol, k.u, k.u, payload) if ok and k.s == symbol else None
        decoder = _TRADES.get(kind)
        if decoder is None:
            return None
        t = decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeError):  # ValidationError is a DecodeError; a str with lone surrogates
        return None
    if t.s != symbol or latest_ms < t.T or not _TRADE_STRINGS.fullmatch(f"{t.p}|{t.q}"):
        return None
    seq = t.t if isinstance(t, TradePayload) else t.a
    return Validated(kind, symbol, seq, seq, payload)
