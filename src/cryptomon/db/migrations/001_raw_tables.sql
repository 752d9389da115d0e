-- 001: raw market data as TimescaleDB hypertables (1-day chunks).
-- Every migration is idempotent and records itself, so the same files serve both
-- `cryptomon db migrate` and docker compose's /docker-entrypoint-initdb.d.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- trade and aggTrade events. trade_id is Binance's `t` (trade) or `a` (aggTrade id); they are
-- consecutive per symbol and event type, which the ingestion uses to detect and backfill gaps.
-- The primary key makes a replayed Kafka message a no-op (ON CONFLICT DO NOTHING); it has to
-- contain the partitioning column event_time, which a replay carries unchanged.
CREATE TABLE IF NOT EXISTS trades (
    event_time      TIMESTAMPTZ    NOT NULL,
    symbol          TEXT           NOT NULL,
    event_type      TEXT           NOT NULL CHECK (event_type IN ('trade', 'aggTrade')),
    trade_id        BIGINT         NOT NULL,
    price           NUMERIC(20, 8) NOT NULL,
    quantity        NUMERIC(20, 8) NOT NULL,
    is_buyer_maker  BOOLEAN        NOT NULL,
    ingestion_ts    TIMESTAMPTZ    NOT NULL,
    backfilled      BOOLEAN        NOT NULL DEFAULT FALSE,
    PRIMARY KEY (symbol, event_type, trade_id, event_time)
);
SELECT create_hypertable('trades', by_range('event_time', INTERVAL '1 day'), if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS trades_symbol_time_idx ON trades (symbol, event_time DESC);

-- bookTicker updates. Spot bookTicker carries no event time, so ingestion_ts (stamped once by
-- the ingestion and carried in the Kafka message) is the time column; a replay keeps it.
CREATE TABLE IF NOT EXISTS book_ticker (
    ingestion_ts    TIMESTAMPTZ    NOT NULL,
    symbol          TEXT           NOT NULL,
    update_id       BIGINT         NOT NULL,
    best_bid_price  NUMERIC(20, 8) NOT NULL,
    best_bid_qty    NUMERIC(20, 8) NOT NULL,
    best_ask_price  NUMERIC(20, 8) NOT NULL,
    best_ask_qty    NUMERIC(20, 8) NOT NULL,
    PRIMARY KEY (symbol, update_id, ingestion_ts)
);
SELECT create_hypertable('book_ticker', by_range('ingestion_ts', INTERVAL '1 day'), if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS book_ticker_symbol_time_idx ON book_ticker (symbol, ingestion_ts DESC);

INSERT INTO schema_migrations (version, name) VALUES (1, 'raw_tables') ON CONFLICT (version) DO NOTHING;
