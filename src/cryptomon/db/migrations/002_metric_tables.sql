-- 002: tables the Spark Structured Streaming job upserts into, keyed by (symbol, window_start)
-- so that each micro-batch can correct a partial window with ON CONFLICT ... DO UPDATE.
CREATE TABLE IF NOT EXISTS trade_metrics (
    symbol            TEXT             NOT NULL,
    window_start      TIMESTAMPTZ      NOT NULL,
    window_end        TIMESTAMPTZ      NOT NULL,
    vwap              NUMERIC(28, 12)  NOT NULL,
    price_stddev      DOUBLE PRECISION,              -- sample stddev; NULL for a single trade
    trade_count       BIGINT           NOT NULL,
    volume            NUMERIC(28, 8)   NOT NULL,
    volatility_alert  BOOLEAN          NOT NULL,
    volume_spike      BOOLEAN          NOT NULL,
    updated_at        TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, window_start)
);
SELECT create_hypertable('trade_metrics', by_range('window_start', INTERVAL '7 days'), if_not_exists => TRUE);

CREATE TABLE IF NOT EXISTS spread_metrics (
    symbol          TEXT            NOT NULL,
    window_start    TIMESTAMPTZ     NOT NULL,
    window_end      TIMESTAMPTZ     NOT NULL,
    avg_spread      NUMERIC(28, 12) NOT NULL,
    max_spread      NUMERIC(20, 8)  NOT NULL,
    min_spread      NUMERIC(20, 8)  NOT NULL,
    update_count    BIGINT          NOT NULL,
    spread_warning  BOOLEAN         NOT NULL,
    updated_at      TIMESTAMPTZ     NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, window_start)
);
SELECT create_hypertable('spread_metrics', by_range('window_start', INTERVAL '7 days'), if_not_exists => TRUE);

INSERT INTO schema_migrations (version, name) VALUES (2, 'metric_tables') ON CONFLICT (version) DO NOTHING;
