"""The streaming job's metrics as SQL run in TimescaleDB on the exact sums Spark computes for each
micro-batch, what the job counted, and the oracle the tests compare with (formulas, flags and why the
merges are exact: docs/design.md).
"""

from __future__ import annotations

# A batch's sums per trade window (symbol, window_start, n, sum_pq, sum_q, sum_p, sum_pp, threshold, ids)
# added to the window's (trade_count is its n, volume its sum of q) and the metrics computed from the
# totals; ids: the ids the window has counted with this batch, '{first,last,first,last,...}'.
# Windows written before migration 012 have no sums: left as they are.
TRADE_MERGE = """
INSERT INTO trade_metrics AS m (symbol, window_start, window_end, vwap, price_stddev, trade_count, volume,
                                volatility_alert, volume_spike, updated_at, sum_pq, sum_p, sum_pp,
                                counted_ids)
SELECT symbol, window_start, window_start + interval '1 minute', round(sum_pq / sum_q, 20), stddev, n, sum_q,
       coalesce(stddev > threshold, false), false, now(), sum_pq, sum_p, sum_pp,
       ids::bigint[]
FROM (
    SELECT t.*, CASE WHEN n > 1 THEN sqrt(greatest((sum_pp - sum_p * sum_p / n) / (n - 1), 0))::double precision
                END AS stddev
    FROM (
        SELECT b.symbol, b.window_start, b.threshold, b.ids, b.n + coalesce(o.trade_count, 0) AS n,
               b.sum_pq + coalesce(o.sum_pq, 0) AS sum_pq, b.sum_q + coalesce(o.volume, 0) AS sum_q,
               b.sum_p + coalesce(o.sum_p, 0) AS sum_p, b.sum_pp + coalesce(o.sum_pp, 0) AS sum_pp
        FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[],
                    %s::numeric[], %s::double precision[], %s::text[])
             AS b(symbol, window_start, n, sum_pq, sum_q, sum_p, sum_pp, threshold, ids)
        LEFT JOIN trade_metrics o ON o.symbol = b.symbol AND o.window_start = b.window_start
        WHERE o.symbol IS NULL OR o.sum_pq IS NOT NULL
    ) t
) x
ON CONFLICT (symbol, window_start) DO UPDATE SET
    vwap = EXCLUDED.vwap, price_stddev = EXCLUDED.price_stddev, trade_count = EXCLUDED.trade_count,
    volume = EXCLUDED.volume, volatility_alert = EXCLUDED.volatility_alert, updated_at = EXCLUDED.updated_at,
    sum_pq = EXCLUDED.sum_pq, sum_p = EXCLUDED.sum_p, sum_pp = EXCLUDED.sum_pp, counted_ids = EXCLUDED.counted_ids
"""

# where each partition's counting stands, locked for the batch's transaction (one job writes at a time)
OFFSETS = "SELECT topic, kafka_partition, next_offset FROM metric_offsets ORDER BY 1, 2"
OFFSETS_LOCKED = OFFSETS + " FOR UPDATE"
# (topics[], partitions[], next offsets[])
OFFSETS_SAVE = """
INSERT INTO metric_offsets (topic, kafka_partition, next_offset)
SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[])
ON CONFLICT (topic, kafka_partition) DO UPDATE SET next_offset = greatest(metric_offsets.next_offset,
                                                                          EXCLUDED.next_offset)
"""
# the ids the batch's trade windows have counted ([first, last, first, last, ...]), from the oldest window
# (symbols[], window starts[], oldest)
TRADE_IDS = """
SELECT m.symbol, m.window_start, m.counted_ids
FROM trade_metrics m
JOIN unnest(%s::text[], %s::timestamptz[]) AS b(symbol, window_start) USING (symbol, window_start)
WHERE m.window_start >= %s AND m.counted_ids IS NOT NULL
"""

# Recompute volume_spike for the symbols just written, from the earliest window that changed onwards
# (a late correction of one window changes the baseline of the next N).
VOLUME_SPIKE_UPDATE = """
UPDATE trade_metrics t SET volume_spike = c.spike
FROM (
    SELECT symbol, window_start,
           coalesce(volume > %(k)s * avg(volume) OVER prev AND count(*) OVER prev >= %(m)s, false) AS spike
    FROM trade_metrics
    WHERE symbol = ANY(%(symbols)s) AND window_start >= %(since)s::timestamptz - interval '1 day'
    WINDOW prev AS (PARTITION BY symbol ORDER BY window_start ROWS BETWEEN %(n)s PRECEDING AND 1 PRECEDING)
) c
WHERE t.symbol = c.symbol AND t.window_start = c.window_start
  AND t.window_start >= %(since)s AND t.volume_spike IS DISTINCT FROM c.spike
"""

# A batch's spread windows (symbol, window_start, n, sum_spread, max_spread, min_spread) merged the same way.
SPREAD_MERGE = """
INSERT INTO spread_metrics AS m (symbol, window_start, window_end, avg_spread, max_spread, min_spread, update_count,
                                 spread_warning, updated_at, sum_spread)
SELECT symbol, window_start, window_start + interval '30 seconds', round(sum_spread / n, 20), max_spread,
       min_spread, n, max_spread > %s * min_spread, now(), sum_spread
FROM (
    SELECT b.symbol, b.window_start, b.n + coalesce(o.update_count, 0) AS n,
           b.sum_spread + coalesce(o.sum_spread, 0) AS sum_spread,
           greatest(b.max_spread, o.max_spread) AS max_spread, least(b.min_spread, o.min_spread) AS min_spread
    FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[])
         AS b(symbol, window_start, n, sum_spread, max_spread, min_spread)
    LEFT JOIN spread_metrics o ON o.symbol = b.symbol AND o.window_start = b.window_start
    WHERE o.symbol IS NULL OR o.sum_spread IS NOT NULL
) x
ON CONFLICT (symbol, window_start) DO UPDATE SET
    avg_spread = EXCLUDED.avg_spread, max_spread = EXCLUDED.max_spread, min_spread = EXCLUDED.min_spread,
    update_count = EXCLUDED.update_count, spread_warning = EXCLUDED.spread_warning,
    updated_at = EXCLUDED.updated_at, sum_spread = EXCLUDED.sum_spread
"""

PROGRESS_INSERT = """
INSERT INTO stream_progress (query, batch_id, run_id, batch_timestamp, input_rows, dropped_late, duration_ms)
VALUES (%s, %s, %s, %s, %s, 0, %s)
ON CONFLICT (query, run_id, batch_id) DO UPDATE SET input_rows = EXCLUDED.input_rows,
    duration_ms = EXCLUDED.duration_ms
"""

# the dead letters the job sent in a batch
PROGRESS_COUNTS = """
INSERT INTO stream_progress AS p (query, batch_id, run_id, batch_timestamp, input_rows, dropped_late, duration_ms,
                                  dead_letters)
VALUES (%(query)s, %(batch_id)s, %(run_id)s, now(), %(input_rows)s, 0, %(duration_ms)s, %(dead_letters)s)
ON CONFLICT (query, run_id, batch_id) DO UPDATE SET dead_letters = EXCLUDED.dead_letters
"""

# records the streaming job cannot convert: one dead letter per Kafka record (the worker may have
# written the same record already: then that row stays)
DEAD_LETTER_INSERT = """
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, kafka_key, payload, error)
SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bytea[], %s::bytea[], %s::text[])
ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING
"""

# The oracle: the same metrics recomputed from the raw rows (used by the tests).
TRADE_ORACLE = """
WITH w AS (
    SELECT symbol, time_bucket('1 minute', event_time) AS window_start,
           round(sum(price * quantity) / sum(quantity), 20) AS vwap,
           stddev_samp(price)::double precision AS price_stddev,
           count(*) AS trade_count, sum(quantity) AS volume
    FROM trades WHERE event_type = 'trade' AND symbol = ANY(%(symbols)s)
    GROUP BY 1, 2
)
SELECT symbol, window_start, vwap, price_stddev, trade_count, volume,
       coalesce(volume > %(k)s * avg(volume) OVER prev AND count(*) OVER prev >= %(m)s, false) AS volume_spike
FROM w
WINDOW prev AS (PARTITION BY symbol ORDER BY window_start ROWS BETWEEN %(n)s PRECEDING AND 1 PRECEDING)
ORDER BY symbol, window_start
"""

SPREAD_ORACLE = """
SELECT symbol, time_bucket('30 seconds', ingestion_ts) AS window_start,
       round(avg(best_ask_price - best_bid_price), 20) AS avg_spread,
       max(best_ask_price - best_bid_price) AS max_spread, min(best_ask_price - best_bid_price) AS min_spread,
       count(*) AS update_count,
       max(best_ask_price - best_bid_price) > %(f)s * min(best_ask_price - best_bid_price) AS spread_warning
FROM book_ticker WHERE symbol = ANY(%(symbols)s)
GROUP BY 1, 2 ORDER BY 1, 2
"""


def columns(rows: list[tuple]) -> list[list]:
    """Row tuples -> one list per column (the unnest parameters)."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else []
