"""The names every stage shares, in one place: Binance's event kinds and their id fields, the topic roles
(see kafka/topics.conf) and the raw tables they land in (see db/migrations), and those tables' columns."""

from __future__ import annotations

# ---- Binance's event kinds ("e" of a payload; bookTicker payloads carry none)
TRADE, AGG_TRADE, BOOK_TICKER_EVENT = "trade", "aggTrade", "bookTicker"
KINDS = (TRADE, AGG_TRADE, BOOK_TICKER_EVENT)
TRADE_KINDS = (TRADE, AGG_TRADE)  # consecutive ids per symbol: a skipped id is a gap to backfill
# the id of each kind in the stream payload (and in Kafka); consecutive per symbol for trades and aggTrades
SEQ_FIELD = {TRADE: "t", AGG_TRADE: "a", BOOK_TICKER_EVENT: "u"}

# ---- topic roles (topics.conf) = raw tables (migrations)
TRADES, BOOK_TICKER, DEADLETTER = "trades", "book_ticker", "deadletter"
INGEST_STATE = "ingest_state"  # topic role only: the ingestion's durable resume points and open gaps
ROUTE = {TRADE: TRADES, AGG_TRADE: TRADES, BOOK_TICKER_EVENT: BOOK_TICKER}  # event kind -> topic role / table

# ---- raw tables' columns, in the order of the worker's rows (consumer/rows.py)
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
