-- 009: the book stage's liquidity metrics (src/cryptomon/book/metrics.py), one row per symbol and window of
-- event time (CRYPTOMON_BOOK_METRICS_SECONDS, 30 s), grown by each order_book_snapshots row of the window
-- (a sample). Sums and counts, so that a window grows sample by sample: last_update_id is its last sample's,
-- and an upsert never moves a window back (a replay writes no older state over a newer one).
CREATE TABLE IF NOT EXISTS book_metrics (
    window_start         TIMESTAMPTZ NOT NULL,
    symbol               TEXT        NOT NULL,
    last_update_id       BIGINT      NOT NULL,
    samples              INTEGER     NOT NULL,
    mid                  NUMERIC     NOT NULL,  -- at the last sample
    microprice           NUMERIC     NOT NULL,  -- at the last sample
    spread_sum           NUMERIC     NOT NULL,  -- ask - bid, over the samples
    spread_bps_sum       NUMERIC     NOT NULL,  -- the spread in bps of the mid, over the samples
    spread_max           NUMERIC     NOT NULL,
    depth_10bps_samples  INTEGER     NOT NULL,  -- samples whose book knew the 10 bps band whole
    bid_depth_10bps_sum  NUMERIC     NOT NULL,  -- quote currency (price * qty) within 10 bps of the mid
    ask_depth_10bps_sum  NUMERIC     NOT NULL,
    imbalance_10bps_sum  NUMERIC     NOT NULL,  -- (bid - ask) / (bid + ask) within 10 bps
    depth_1pct_samples   INTEGER     NOT NULL,  -- samples whose book knew the 1 % band whole
    bid_depth_1pct_sum   NUMERIC     NOT NULL,
    ask_depth_1pct_sum   NUMERIC     NOT NULL,
    checks               BIGINT      NOT NULL,  -- book tops compared with Binance's bookTicker in the window
    mismatches           BIGINT      NOT NULL,
    -- the mean depth in CRYPTOMON_LIQUIDITY_BAND below CRYPTOMON_LIQUIDITY_DROP_FRACTION of its median over
    -- the previous 30 minutes of windows (what the liquidity alert reads)
    liquidity_drop       BOOLEAN     NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, window_start)
);
SELECT create_hypertable('book_metrics', by_range('window_start', INTERVAL '7 days'), if_not_exists => TRUE);

-- the means, for dashboards and people: a depth mean is over the samples that knew its band whole (NULL
-- when none did)
CREATE OR REPLACE VIEW book_liquidity AS
SELECT window_start, symbol, samples, mid, microprice,
       spread_sum / samples AS spread,
       spread_bps_sum / samples AS spread_bps,
       spread_max,
       bid_depth_10bps_sum / NULLIF(depth_10bps_samples, 0) AS bid_depth_10bps,
       ask_depth_10bps_sum / NULLIF(depth_10bps_samples, 0) AS ask_depth_10bps,
       imbalance_10bps_sum / NULLIF(depth_10bps_samples, 0) AS imbalance_10bps,
       bid_depth_1pct_sum / NULLIF(depth_1pct_samples, 0) AS bid_depth_1pct,
       ask_depth_1pct_sum / NULLIF(depth_1pct_samples, 0) AS ask_depth_1pct,
       checks, mismatches, liquidity_drop, updated_at
FROM book_metrics;

INSERT INTO schema_migrations (version, name) VALUES (9, 'book_metrics') ON CONFLICT (version) DO NOTHING;
