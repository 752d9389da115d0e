"""The contract's fast path, in C: a record of the trades or book_ticker topic decoded by msgspec into a typed
struct whose constraints are a subset of `schema.validate_payload`'s (exact JSON types, the ASCII decimal
patterns, ids in 0..MAX_ID, times from Binance's first year, no field the payload kind does not have, a
trade's price and quantity not zero).

A record this accepts, the contract accepts with the same values (property-tested in
tests/unit/test_binance_records.py); for anything else (an unknown field, a value out of bounds, not JSON)
`decode_*` returns None and the caller asks the contract, which accepts it or says why not. The checks that
depend on the record's own times (an event time past the ingestion time plus the skew) stay in the caller,
in Python, after the decode. The records hold only strings, ints and bools, so they stay out of the cyclic
garbage collector (`gc=False`: a tenth less time a decode).
"""

from __future__ import annotations

import re

import msgspec

from cryptomon.binance.payloads import NONZERO, BookTickerPayload, Id, Millis, TradeFields
from cryptomon.binance.schema import AGG_TRADE, PRICE, QUANTITY, SYMBOL, TRADE


class _Trades(TradeFields, frozen=True, kw_only=True, gc=False):
    """What a trade and an aggTrade of the trades topic both have: the payload's fields and the ingestion's."""

    ingestion_timestamp: Millis
    backfilled: bool = False


class TradeRecord(_Trades, tag_field="e", tag=TRADE, frozen=True, gc=False):
    """A trade as the ingestion writes it to the trades topic."""

    t: Id


class AggTradeRecord(_Trades, tag_field="e", tag=AGG_TRADE, frozen=True, gc=False):
    """An aggTrade as the ingestion writes it to the trades topic."""

    a: Id
    f: Id
    l: Id  # noqa: E741 (Binance's name)


class BookTickerRecord(BookTickerPayload, frozen=True, gc=False):
    """A bookTicker as the ingestion writes it to the book_ticker topic."""

    ingestion_timestamp: Millis


# the strings' patterns, checked in one regex call a record ("|" is in none of them, so the whole matches
# exactly when each part does): msgspec's own `pattern` calls Python's re once per field, 5x slower here
_TRADE_STRINGS = re.compile(rf"(?:{SYMBOL.pattern})\|{NONZERO}(?:{PRICE.pattern})\|{NONZERO}(?:{QUANTITY.pattern})")
_BOOK_STRINGS = re.compile(
    rf"(?:{SYMBOL.pattern})\|(?:{PRICE.pattern})\|(?:{QUANTITY.pattern})\|(?:{PRICE.pattern})\|(?:{QUANTITY.pattern})"
)
# the decoders alone (cryptomon.worker.bulk checks a whole batch's strings at once)
TRADE_DECODER = msgspec.json.Decoder(TradeRecord | AggTradeRecord)
BOOK_TICKER_DECODER = msgspec.json.Decoder(BookTickerRecord)


def decode_trade(value: bytes) -> TradeRecord | AggTradeRecord | None:
    """A trades-topic value as its typed record, or None when only the contract can say (see the module)."""
    try:
        r = TRADE_DECODER.decode(value)
    except msgspec.DecodeError:  # ValidationError is one
        return None
    return r if _TRADE_STRINGS.fullmatch(f"{r.s}|{r.p}|{r.q}") else None


def decode_book_ticker(value: bytes) -> BookTickerRecord | None:
    """A book_ticker-topic value as its typed record, or None when only the contract can say."""
    try:
        r = BOOK_TICKER_DECODER.decode(value)
    except msgspec.DecodeError:  # ValidationError is one
        return None
    return r if _BOOK_STRINGS.fullmatch(f"{r.s}|{r.b}|{r.B}|{r.a}|{r.A}") else None
