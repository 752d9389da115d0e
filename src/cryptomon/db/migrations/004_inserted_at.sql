-- 004: when each raw row was written, so end-to-end latency (inserted_at - ingestion_ts) is one query
-- away, for operators and for the benchmarks. now() is the inserting statement's transaction time.
ALTER TABLE trades ADD COLUMN IF NOT EXISTS inserted_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE book_ticker ADD COLUMN IF NOT EXISTS inserted_at TIMESTAMPTZ NOT NULL DEFAULT now();

INSERT INTO schema_migrations (version, name) VALUES (4, 'inserted_at') ON CONFLICT (version) DO NOTHING;
