-- 007: repair of metric windows that received rows after Spark had closed them (spark/repair.py).
-- The repair loop finds such rows by when they were written: an index on inserted_at keeps that a
-- range scan, whatever the size of the table.
CREATE INDEX IF NOT EXISTS trades_inserted_at_idx ON trades (inserted_at);

-- how far the repair loop has looked: a restart continues from here (rows written since are scanned again)
CREATE TABLE IF NOT EXISTS metric_repair_cursor (
    name           TEXT        PRIMARY KEY,
    scanned_until  TIMESTAMPTZ NOT NULL
);

-- per micro-batch: records the streaming job sent to dead_letters; per repair round: windows changed
ALTER TABLE stream_progress ADD COLUMN IF NOT EXISTS dead_letters BIGINT NOT NULL DEFAULT 0;
ALTER TABLE stream_progress ADD COLUMN IF NOT EXISTS repaired_windows BIGINT NOT NULL DEFAULT 0;

-- VWAP and mean spread to 20 decimals (were 12): a memecoin's price of 0.00000812 kept only 8 significant
-- digits at 12 decimals (relative error up to 6e-9); at 20, any price >= 1e-8 keeps a relative error
-- below 5e-13. Prices are < 1e8, so 28 digits hold them.
ALTER TABLE trade_metrics ALTER COLUMN vwap TYPE NUMERIC(28, 20);
ALTER TABLE spread_metrics ALTER COLUMN avg_spread TYPE NUMERIC(28, 20);

INSERT INTO schema_migrations (version, name) VALUES (7, 'metric_repair') ON CONFLICT (version) DO NOTHING;
