"""Pure logic of the worker: a Kafka message value -> its table row, or why it is a dead letter.

A row keeps Binance's decimal strings as they are (PostgreSQL parses them into NUMERIC exactly) and
epoch-millisecond times (converted in SQL), so nothing is rounded on the way.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from cryptomon.binance import limits
from cryptomon.binance.records import TradeRecord, decode_book_ticker, decode_trade
from cryptomon.binance.schema import (
    AGG_TRADE,
    BOOK_TICKER_EVENT,
    SEQ_FIELD,
    TRADE,
    TRADE_KINDS,
    check_time,
    short_repr,
    validate_payload,
)
from cryptomon.errors import BadData
from cryptomon.names import BOOK_TICKER, TRADES

SKEW_MS = limits.DEFAULT_CLOCK_SKEW_SECONDS * 1000
_new = tuple.__new__


class TradeRow(NamedTuple):
    """A `trades` row as the sink sends it: decimals as Binance's strings, times in epoch ms."""

    event_time_ms: int
    symbol: str
    event_type: str
    trade_id: int
    price: str
    quantity: str
    is_buyer_maker: bool
    ingestion_ms: int
    backfilled: bool


class BookRow(NamedTuple):
    """A `book_ticker` row as the sink sends it."""

    ingestion_ms: int
    symbol: str
    update_id: int
    bid: str
    bid_qty: str
    ask: str
    ask_qty: str


class DeadLetter(NamedTuple):
    """A `dead_letters` row: where the message was in Kafka, its bytes, and why it was set aside."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: str


def trade_row(value: bytes | None, latest_ms: int | None = None, skew_ms: int = SKEW_MS) -> TradeRow:
    """A trades-topic message -> its row. Raises BadData. `latest_ms`: the latest acceptable ingestion time
    (the record's Kafka timestamp plus the clock skew allowed); an event time may pass its ingestion time by
    `skew_ms`. The common record is decoded typed, in C (binance/records.py); anything else is the contract's."""
    r = decode_trade(value) if value is not None else None
    if (
        r is not None
        and (latest_ms is None or r.ingestion_timestamp <= latest_ms)
        and r.ingestion_timestamp + skew_ms >= r.T
    ):
        # tuple.__new__: the NamedTuple without its Python-level constructor (0.3 us a row)
        if isinstance(r, TradeRecord):
            return _new(TradeRow, (r.T, r.s, TRADE, r.t, r.p, r.q, r.m, r.ingestion_timestamp, r.backfilled))
        return _new(TradeRow, (r.T, r.s, AGG_TRADE, r.a, r.p, r.q, r.m, r.ingestion_timestamp, r.backfilled))
    return contract_trade_row(value, latest_ms, skew_ms)


def contract_trade_row(value: bytes | None, latest_ms: int | None = None, skew_ms: int = SKEW_MS) -> TradeRow:
    """`trade_row` by the contract alone (orjson + validate_payload): what says why a record is bad."""
    d = _load(value)
    kind = d.get("e")
    if kind not in TRADE_KINDS:
        raise BadData("bad_event_type", f"event type {short_repr(kind)} on the trades topic")
    _check(kind, d, latest_ms, skew_ms)
    return TradeRow(
        d["T"],
        d["s"],
        kind,
        d[SEQ_FIELD[kind]],
        d["p"],
        d["q"],
        d["m"],
        d["ingestion_timestamp"],
        d.get("backfilled", False),
    )


def book_row(value: bytes | None, latest_ms: int | None = None, skew_ms: int = SKEW_MS) -> BookRow:
    """A book_ticker-topic message -> its row. Raises BadData. Typed in C first, as `trade_row`."""
    r = decode_book_ticker(value) if value is not None else None
    if r is not None and (latest_ms is None or r.ingestion_timestamp <= latest_ms):
        return _new(BookRow, (r.ingestion_timestamp, r.s, r.u, r.b, r.B, r.a, r.A))
    return contract_book_row(value, latest_ms, skew_ms)


def contract_book_row(value: bytes | None, latest_ms: int | None = None, skew_ms: int = SKEW_MS) -> BookRow:
    """`book_row` by the contract alone."""
    d = _load(value)
    _check(BOOK_TICKER_EVENT, d, latest_ms, skew_ms)
    return BookRow(d["ingestion_timestamp"], d["s"], d["u"], d["b"], d["B"], d["a"], d["A"])


def _load(value: bytes | None) -> dict:
    if value is None:
        raise BadData("empty", "empty message")
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadData("not_json", f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise BadData("bad_envelope", f"a JSON {type(d).__name__}, not an object")
    return d


def _check(kind: str, d: dict, latest_ms: int | None, skew_ms: int) -> None:
    ts = check_time("ingestion_timestamp", d.get("ingestion_timestamp"), latest_ms)
    backfilled = d.get("backfilled", False)
    if type(backfilled) is not bool:
        raise BadData("wrong_type", f"backfilled is {type(backfilled).__name__}, expected bool")
    validate_payload(kind, d, None, ts + skew_ms)  # an event time may pass its ingestion time by the skew


PARSERS = {TRADES: trade_row, BOOK_TICKER: book_row}
