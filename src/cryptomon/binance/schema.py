"""Binance's spot market-data payloads: event kinds, their id fields, the fields and types each must have,
and the value bounds cryptomon stores exactly (from `limits`), checked in one place for every stage.

  trade      {"e":"trade","E":ms,"s":"BTCUSDT","t":id,"p":"price","q":"qty","T":ms,"m":bool,"M":bool}
  aggTrade   {"e":"aggTrade","E":ms,"s":..,"a":id,"p":..,"q":..,"f":firstId,"l":lastId,"T":ms,"m":bool,"M":bool}
  bookTicker {"u":updateId,"s":..,"b":bid,"B":bidQty,"a":ask,"A":askQty}           (no event time)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn, TypeGuard

from cryptomon.binance import limits
from cryptomon.errors import BadData

# ---- event kinds ("e" of a payload; bookTicker payloads carry none)
TRADE, AGG_TRADE, BOOK_TICKER_EVENT = "trade", "aggTrade", "bookTicker"
KINDS = (TRADE, AGG_TRADE, BOOK_TICKER_EVENT)
DEPTH = "depthUpdate"  # <symbol>@depth@100ms: diffs of the book (orderbook.py)
DEPTH_SNAPSHOT = "depthSnapshot"  # an /api/v3/depth answer, as recorded or as the ingestion fetched it
TRADE_KINDS = (TRADE, AGG_TRADE)  # consecutive ids per symbol: a skipped id is a gap to backfill
# the id of each kind in the stream payload (and in Kafka); consecutive per symbol for trades and aggTrades
SEQ_FIELD = {TRADE: "t", AGG_TRADE: "a", BOOK_TICKER_EVENT: "u"}

# prices fit DECIMAL(16,8), quantities DECIMAL(20,8) (the raw tables' NUMERIC(20,8)), ASCII digits only
# (`\d` would let Arabic-Indic digits in): see limits.py. Possessive (`{1,8}+`: no backtracking, 30 % faster
# here) matches the same strings, since a digit run can only end at a point or the string's end.
PRICE = re.compile(rf"[0-9]{{1,{limits.PRICE_INTEGER_DIGITS}}}+(?:\.[0-9]{{1,{limits.DECIMALS}}}+)?+")
QUANTITY = re.compile(rf"[0-9]{{1,{limits.QUANTITY_INTEGER_DIGITS}}}+(?:\.[0-9]{{1,{limits.DECIMALS}}}+)?+")
SYMBOL = re.compile(rf"[A-Z0-9]{{2,{limits.SYMBOL_MAX_LENGTH}}}+")
_REQUIRED = {
    TRADE: (("t", int), ("p", str), ("q", str), ("T", int), ("m", bool)),
    AGG_TRADE: (("a", int), ("p", str), ("q", str), ("f", int), ("l", int), ("T", int), ("m", bool)),
    BOOK_TICKER_EVENT: (("u", int), ("b", str), ("B", str), ("a", str), ("A", str)),
}
_DECIMALS = {
    TRADE: (("p", PRICE), ("q", QUANTITY)),
    AGG_TRADE: (("p", PRICE), ("q", QUANTITY)),
    BOOK_TICKER_EVENT: (("b", PRICE), ("B", QUANTITY), ("a", PRICE), ("A", QUANTITY)),
}
_POSITIVE = {TRADE: ("p", "q"), AGG_TRADE: ("p", "q"), BOOK_TICKER_EVENT: ()}  # a trade of nothing is no trade
_IDS = {TRADE: ("t",), AGG_TRADE: ("a", "f", "l"), BOOK_TICKER_EVENT: ("u",)}
# the fields each kind has: anything else (cryptomon's ingestion_timestamp and backfilled in Kafka too,
# checked by the worker itself) is an unknown field, held to the unknown fields' bounds
_KNOWN = {
    TRADE: frozenset({"e", "E", "s", "t", "p", "q", "T", "m", "M"}),
    AGG_TRADE: frozenset({"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}),
    BOOK_TICKER_EVENT: frozenset({"u", "s", "b", "B", "a", "A"}),
}
_SCALARS = (str, int, float, bool, type(None))


@dataclass(slots=True)
class Event:
    """One validated Binance event: its kind, symbol, id (`t`, `a` or `u`) and the payload as sent."""

    kind: str  # trade | aggTrade | bookTicker
    symbol: str
    seq: int  # t, a or u
    data: dict


def validate_payload(kind: str, data: object, symbol: str | None = None, latest_ms: int | None = None) -> str:
    """Check a Binance payload of `kind` against the contract (limits.py); returns its symbol. Raises BadData.

    `symbol`: the symbol the stream is for; `latest_ms`: the latest acceptable event time (the ingestion
    time plus the clock skew allowed), None for no upper bound. Every message goes through here twice
    (ingestion and worker), so the common case is one pass of exact-type checks (JSON parsers make exact
    types; `type(v) is int` also refuses a bool) and the error messages are built only on the way out."""
    if type(data) is not dict:
        raise BadData("bad_payload", f"data is {type(data).__name__}, not an object")
    s = data.get("s")
    if type(s) is not str or (symbol is not None and s != symbol) or SYMBOL.fullmatch(s) is None:
        _bad_symbol(s, symbol)
    if kind != BOOK_TICKER_EVENT and data.get("e") != kind:
        raise BadData("bad_event_type", f"event type {short_repr(data.get('e'))} on a {kind} stream")
    for name, expected in _REQUIRED[kind]:
        if type(data.get(name)) is not expected:
            _wrong_field(kind, name, data.get(name), expected)
    for name, pattern in _DECIMALS[kind]:
        if pattern.fullmatch(data[name]) is None:  # not match: "$" also matches before a final newline
            _bad_decimal(kind, name, data[name], pattern)
    for name in _POSITIVE[kind]:
        if is_zero(data[name]):
            raise BadData("not_positive", f"{kind} field {name!r}={data[name]!r} is zero")
    for name in _IDS[kind]:
        if not 0 <= data[name] <= limits.MAX_ID:
            raise BadData("bad_id", f"{kind} field {name!r}={data[name]} is not a non-negative 63-bit id")
    if kind != BOOK_TICKER_EVENT:
        check_time(f"{kind} time T", data["T"], latest_ms)
    if len(data) > limits.MAX_PAYLOAD_FIELDS:
        raise BadData("too_many_fields", f"{kind} payload has {len(data)} fields (at most {limits.MAX_PAYLOAD_FIELDS})")
    known = _KNOWN[kind]
    for name, value in data.items():
        if name not in known and (
            type(value) not in _SCALARS or (type(value) is str and len(value) > limits.MAX_UNKNOWN_STRING)
        ):
            _bad_unknown(kind, name, value)
    return s


def is_zero(decimal: str) -> bool:
    """A decimal string the contract accepted (digits, at most one point) is zero when it has no other digit."""
    return not decimal.strip("0.")


def is_id(value: object) -> TypeGuard[int]:
    """A trade, aggTrade or update id as the contract has it: an int (not a bool) in 0..MAX_ID."""
    return type(value) is int and 0 <= value <= limits.MAX_ID


def check_time(what: str, ms: object, latest_ms: int | None) -> int:
    """`ms` if it is an epoch-millisecond time between Binance's first year and `latest_ms` (None: no upper
    bound); raises BadData otherwise."""
    if type(ms) is not int or ms < limits.FIRST_EVENT_MS or (latest_ms is not None and ms > latest_ms):
        bound = f"{limits.FIRST_EVENT_MS}..{latest_ms if latest_ms is not None else ''}"
        raise BadData(
            "bad_time", f"{what} {short_repr(ms)} is outside {bound} (epoch ms; see CRYPTOMON_MAX_CLOCK_SKEW_SECONDS)"
        )
    return ms


def short_repr(value: object, limit: int = 80) -> str:
    """repr of a value, cut for an error message (a hostile value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def _bad_symbol(s: object, symbol: str | None) -> NoReturn:
    if symbol is not None and s != symbol:
        raise BadData("bad_symbol", f"symbol {short_repr(s)} does not match stream symbol {symbol!r}")
    raise BadData(
        "bad_symbol",
        f"symbol {short_repr(s)} is not upper-case letters and digits of at most {limits.SYMBOL_MAX_LENGTH}",
    )


def _bad_unknown(kind: str, name: str, value: object) -> NoReturn:
    size = f" of {len(value)} chars" if isinstance(value, str) else ""
    raise BadData(
        "bad_unknown_field",
        f"{kind} field {short_repr(name, 40)} is a {type(value).__name__}{size}: unknown fields must be scalars, "
        f"strings of at most {limits.MAX_UNKNOWN_STRING} chars",
    )


def _wrong_field(kind: str, name: str, value: object, expected: type) -> NoReturn:
    if value is None:
        raise BadData("missing_field", f"{kind} without field {name!r}")
    raise BadData("wrong_type", f"{kind} field {name!r} is {type(value).__name__}, expected {expected.__name__}")


def _bad_decimal(kind: str, name: str, value: str, pattern: re.Pattern) -> NoReturn:
    what = "price" if pattern is PRICE else "quantity"
    digits = limits.PRICE_INTEGER_DIGITS if pattern is PRICE else limits.QUANTITY_INTEGER_DIGITS
    raise BadData(
        "bad_decimal",
        f"{kind} field {name!r}={short_repr(value)} is not a {what} of at most {digits} integer digits "
        f"and {limits.DECIMALS} decimals",
    )


# ------------------------------------------------------------------ REST (backfill) payloads


def trade_from_rest(symbol: str, row: dict) -> Event:
    """/api/v3/historicalTrades row -> a trade stream payload."""
    data = {
        "e": TRADE,
        "E": row["time"],
        "s": symbol,
        "t": row["id"],
        "p": row["price"],
        "q": row["qty"],
        "T": row["time"],
        "m": row["isBuyerMaker"],
        "M": row.get("isBestMatch", True),
    }
    validate_payload(TRADE, data, symbol)
    return Event(TRADE, symbol, data["t"], data)


def agg_trade_from_rest(symbol: str, row: dict) -> Event:
    """/api/v3/aggTrades row (same letters as the stream) -> an aggTrade stream payload."""
    data = {
        "e": AGG_TRADE,
        "E": row["T"],
        "s": symbol,
        "a": row["a"],
        "p": row["p"],
        "q": row["q"],
        "f": row["f"],
        "l": row["l"],
        "T": row["T"],
        "m": row["m"],
        "M": row.get("M", True),
    }
    validate_payload(AGG_TRADE, data, symbol)
    return Event(AGG_TRADE, symbol, data["a"], data)
