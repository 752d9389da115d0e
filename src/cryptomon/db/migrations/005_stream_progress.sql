-- 005: one row per Spark micro-batch and query: input rows, rows dropped as later than the watermark,
-- and how long the batch took. The streaming job reports late events here and in its log.
CREATE TABLE IF NOT EXISTS stream_progress (
    query            TEXT        NOT NULL,
    batch_id         BIGINT      NOT NULL,
    run_id           TEXT        NOT NULL,
    batch_timestamp  TIMESTAMPTZ NOT NULL,
    input_rows       BIGINT      NOT NULL,
    dropped_late     BIGINT      NOT NULL,
    duration_ms      BIGINT      NOT NULL,
    watermark        TIMESTAMPTZ,
    PRIMARY KEY (query, run_id, batch_id)
);

INSERT INTO schema_migrations (version, name) VALUES (5, 'stream_progress') ON CONFLICT (version) DO NOTHING;
