-- 008: the order book stage (`cryptomon book`, src/cryptomon/book/).
-- The top levels of each book, one row per symbol and second of event time in which its book changed: the
-- book after the last diff of that second. Rows follow from the data alone (not from when they were
-- written), so a replay of binance.depth writes the same rows, which the unique key makes no-ops.
CREATE TABLE IF NOT EXISTS order_book_snapshots (
    snapshot_time   TIMESTAMPTZ NOT NULL,  -- the event time (E) of the last diff in the book
    symbol          TEXT        NOT NULL,
    last_update_id  BIGINT      NOT NULL,
    bid_prices      NUMERIC[]   NOT NULL,  -- best first, CRYPTOMON_BOOK_LEVELS at most
    bid_qtys        NUMERIC[]   NOT NULL,
    ask_prices      NUMERIC[]   NOT NULL,
    ask_qtys        NUMERIC[]   NOT NULL,
    inserted_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, last_update_id, snapshot_time)
);
SELECT create_hypertable('order_book_snapshots', by_range('snapshot_time', INTERVAL '1 day'), if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS order_book_snapshots_symbol_time_idx ON order_book_snapshots (symbol, snapshot_time DESC);

-- Where the book stage stands, written in one transaction with the rows: each book as of the checkpoint
-- (every level, so that a restart continues it without a new snapshot) and the next offset of every
-- partition it reads. A restart loads both and replays from there; diffs the books already hold are ignored.
CREATE TABLE IF NOT EXISTS order_book_state (
    consumer_group  TEXT        NOT NULL,
    symbol          TEXT        NOT NULL,
    last_update_id  BIGINT      NOT NULL,
    last_event_ms   BIGINT      NOT NULL,
    bids            JSONB       NOT NULL,  -- [[price, qty], ...] best first, as Binance wrote them
    asks            JSONB       NOT NULL,
    known_bid       TEXT,                  -- the deepest level the snapshot held: beyond it, only levels that changed
    known_ask       TEXT,
    kafka_partition INTEGER     NOT NULL,
    row_pending     BOOLEAN     NOT NULL,  -- the book changed in its last interval and its row is not written yet
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, symbol)
);
CREATE TABLE IF NOT EXISTS book_positions (
    consumer_group  TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset     BIGINT  NOT NULL,
    event_watermark_ms BIGINT NOT NULL DEFAULT 0,  -- the partition's event time (largest E read), for the rows
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

INSERT INTO schema_migrations (version, name) VALUES (8, 'order_book') ON CONFLICT (version) DO NOTHING;
