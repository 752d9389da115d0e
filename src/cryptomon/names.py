"""The pipeline's own names, shared by every stage: the topic roles (see kafka/topics.conf), the raw tables
they land in (see db/migrations) and those tables' columns. Binance's names are in `cryptomon.binance`."""

from __future__ import annotations

from cryptomon.binance.schema import AGG_TRADE, BOOK_TICKER_EVENT, DEPTH, TRADE

# ---- topic roles (topics.conf) = raw tables (migrations)
TRADES, BOOK_TICKER, DEADLETTER = "trades", "book_ticker", "deadletter"
INGEST_STATE = "ingest_state"  # topic role only: the ingestion's durable resume points and open gaps
# the order book: Binance's diffs and the snapshots the ingestion fetched, one topic (the book stage's input)
BOOK_DEPTH = "depth"
DEPTH_REQUESTS = "depth_requests"  # topic role only: the book stage's requests for a snapshot (kafka/depth_requests.py)
# event kind -> topic role (for trades and bookTickers also the raw table)
ROUTE = {TRADE: TRADES, AGG_TRADE: TRADES, BOOK_TICKER_EVENT: BOOK_TICKER, DEPTH: BOOK_DEPTH}
ORDER_BOOK_SNAPSHOTS = "order_book_snapshots"  # the book stage's table: the top levels of each book
# Kafka header of a depth diff or bookTicker: the ingestion's connection session it came over (decimal ASCII),
# for the book's check; a header, so that the record's value stays Binance's payload
SESSION_HEADER = "cryptomon-session"

# ---- raw tables' columns, in the order of the worker's rows (worker/rows.py)
TABLE_COLUMNS = {
    TRADES: (
        "event_time",
        "symbol",
        "event_type",
        "trade_id",
        "price",
        "quantity",
        "is_buyer_maker",
        "ingestion_ts",
        "backfilled",
    ),
    BOOK_TICKER: (
        "ingestion_ts",
        "symbol",
        "update_id",
        "best_bid_price",
        "best_bid_qty",
        "best_ask_price",
        "best_ask_qty",
    ),
}
