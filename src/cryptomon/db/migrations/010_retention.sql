-- 010: retention (src/cryptomon/retention/): whole chunks of the hypertables older than their table's
-- CRYPTOMON_RETENTION_* are written to Parquet, verified, and dropped (drop_chunks), never deleted row by row.

-- Per table, the time before which rows are archived or about to be: the writers (the worker) set aside
-- a row older than it as a dead letter instead of inserting it, so that no row lands in a chunk being
-- archived, nor re-creates one already dropped. A horizon moves only forward, and a chunk is dropped only
-- once its horizon has been published for CRYPTOMON_RETENTION_HOLD_SECONDS (longer than the writers cache it).
CREATE TABLE IF NOT EXISTS archive_horizon (
    table_name    TEXT        PRIMARY KEY,
    horizon       TIMESTAMPTZ NOT NULL,
    published_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per chunk dropped: where its rows went (NULL path: dropped without archive, CRYPTOMON_ARCHIVE=off)
-- and what the archive was verified against.
CREATE TABLE IF NOT EXISTS archive_log (
    table_name   TEXT        NOT NULL,
    chunk_name   TEXT        NOT NULL,
    range_start  TIMESTAMPTZ NOT NULL,
    range_end    TIMESTAMPTZ NOT NULL,
    path         TEXT,
    row_count    BIGINT      NOT NULL,
    min_id       BIGINT,
    max_id       BIGINT,
    bytes        BIGINT,
    dropped_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, chunk_name)
);

-- dead letters and Spark's progress rows are pruned by age (plain tables, small): by these indexes
CREATE INDEX IF NOT EXISTS dead_letters_received_at_idx ON dead_letters (received_at);
CREATE INDEX IF NOT EXISTS stream_progress_batch_timestamp_idx ON stream_progress (batch_timestamp);

INSERT INTO schema_migrations (version, name) VALUES (10, 'retention') ON CONFLICT (version) DO NOTHING;
