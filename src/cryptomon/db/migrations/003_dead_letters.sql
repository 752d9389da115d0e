-- 003: messages the worker could not parse or insert, kept for inspection. One row per Kafka message:
-- a replay of the same offsets is a no-op.
CREATE TABLE IF NOT EXISTS dead_letters (
    id               BIGSERIAL   PRIMARY KEY,
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    topic            TEXT        NOT NULL,
    kafka_partition  INTEGER     NOT NULL,
    kafka_offset     BIGINT      NOT NULL,
    kafka_key        BYTEA,
    payload          BYTEA,
    error            TEXT        NOT NULL,
    UNIQUE (topic, kafka_partition, kafka_offset)
);

INSERT INTO schema_migrations (version, name) VALUES (3, 'dead_letters') ON CONFLICT (version) DO NOTHING;
