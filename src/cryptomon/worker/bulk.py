"""A whole batch of one table's records at once (pure logic): the common case, where every record is one the
typed decoder takes, gives its rows and their COPY text with one regex over the text instead of one per
record, or None, and then the batch goes record by record (cryptomon.worker.rows), which says which record
is bad and why.

What this accepts, record by record is accepted with the same rows (property-tested in
tests/unit/test_worker_bulk.py): each value decoded alone by the same typed decoder (binance/records.py),
the same time checks, and each line of the text matched by the record's string patterns (symbol, decimals
above zero) between tabs, which none of them can hold. The text is what cryptomon.worker.copytext renders.
Rows are plain tuples in the fields' order of cryptomon.worker.rows' TradeRow and BookRow (a third of the
cost of building the named ones; the sink reads rows by position).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from cryptomon.binance.payloads import NONZERO
from cryptomon.binance.records import BOOK_TICKER_DECODER, TRADE_DECODER, TradeRecord
from cryptomon.binance.schema import AGG_TRADE, PRICE, QUANTITY, SYMBOL, TRADE
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.worker.copytext import RENDERERS

# a line of COPY text as copytext renders a row; `(?:line)*` over the whole text is one call of the regex
# engine for the batch (the patterns hold no tab and no newline, so a line matches exactly when each field
# does). Times are rendered from ints checked before: only their extent is matched (40% faster than their form).
_TIME = r"[^\t\n]++"
_SYMBOL, _PRICE, _QUANTITY = (f"(?:{p.pattern})" for p in (SYMBOL, PRICE, QUANTITY))
LINES = {
    TRADES: re.compile(
        rf"(?:{_TIME}\t{_SYMBOL}\t(?:{TRADE}|{AGG_TRADE})\t[0-9]++\t{NONZERO}{_PRICE}\t{NONZERO}{_QUANTITY}"
        rf"\t[tf]\t{_TIME}\t[tf]\n)*+"
    ),
    BOOK_TICKER: re.compile(rf"(?:{_TIME}\t{_SYMBOL}\t[0-9]++\t{_PRICE}\t{_QUANTITY}\t{_PRICE}\t{_QUANTITY}\n)*+"),
}


def latest_ms(messages: Sequence[Message], skew_ms: int, clock_ms: int) -> list[int]:
    """Per message, the latest ingestion time it may carry: its Kafka timestamp (the broker's append time on
    our topics, so the same verdict whenever it is read) or, without one, the clock as the batch is decoded,
    plus the skew."""
    return [
        (stamp if kind != TIMESTAMP_NOT_AVAILABLE else clock_ms) + skew_ms
        for kind, stamp in [m.timestamp() for m in messages]
    ]


def trades(messages: Sequence[Message], latest: Sequence[int], skew_ms: int) -> tuple[list[tuple], bytes] | None:
    """The trades-topic messages' rows and COPY text, or None when any of them needs the record-by-record path."""
    try:
        records = [TRADE_DECODER.decode(m.value()) for m in messages]  # type: ignore[arg-type]
    except (msgspec.DecodeError, TypeError):  # not one of the typed records; None (no value) is a TypeError
        return None
    # no ingestion time past the latest allowed; an event time may pass its ingestion time by the skew
    if not all([bound >= r.ingestion_timestamp >= r.T - skew_ms for r, bound in zip(records, latest, strict=True)]):
        return None
    rows = [
        (r.T, r.s, TRADE, r.t, r.p, r.q, r.m, r.ingestion_timestamp, r.backfilled)
        if isinstance(r, TradeRecord)
        else (r.T, r.s, AGG_TRADE, r.a, r.p, r.q, r.m, r.ingestion_timestamp, r.backfilled)
        for r in records
    ]
    return _checked(TRADES, rows)


def book_tickers(messages: Sequence[Message], latest: Sequence[int], skew_ms: int) -> tuple[list[tuple], bytes] | None:
    """The book_ticker-topic messages' rows and COPY text, or None (as `trades`)."""
    try:
        records = [BOOK_TICKER_DECODER.decode(m.value()) for m in messages]  # type: ignore[arg-type]
    except (msgspec.DecodeError, TypeError):
        return None
    if not all([r.ingestion_timestamp <= bound for r, bound in zip(records, latest, strict=True)]):
        return None
    return _checked(BOOK_TICKER, [(r.ingestion_timestamp, r.s, r.u, r.b, r.B, r.a, r.A) for r in records])


def _checked(table: str, rows: list[tuple]) -> tuple[list[tuple], bytes] | None:
    text = RENDERERS[table](rows)
    return (rows, text.encode()) if LINES[table].fullmatch(text) is not None else None


BULK = {TRADES: trades, BOOK_TICKER: book_tickers}
