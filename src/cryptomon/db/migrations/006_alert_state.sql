-- 006: the state of every alert instance (rule x symbol) as the project's own notifier last saw it, so
-- that an alert that stays firing is mailed once, also across notifier restarts, and a recovery once.
CREATE TABLE IF NOT EXISTS alert_state (
    rule         TEXT             NOT NULL,
    symbol       TEXT             NOT NULL,
    firing       BOOLEAN          NOT NULL,
    value        DOUBLE PRECISION,
    changed_at   TIMESTAMPTZ      NOT NULL,
    notified_at  TIMESTAMPTZ,
    PRIMARY KEY (rule, symbol)
);

INSERT INTO schema_migrations (version, name) VALUES (6, 'alert_state') ON CONFLICT (version) DO NOTHING;
