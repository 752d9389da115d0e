"""The streaming job's metrics as SQL run in TimescaleDB on the exact sums Spark computes, and the oracle
the tests compare with (formulas and flags: docs/design.md).
"""

from __future__ import annotations

# Upsert of trade windows from their exact sums. {sums} yields (symbol, window_start, window_end, n,
# sum_pq, sum_q, sum_p, sum_pp, threshold): Spark's sums (SPARK_SUMS) or the raw rows' (RAW_SUMS, the
# repair); {only_changed} is empty, or a WHERE that leaves equal windows alone and so counts real repairs.
_TRADE_UPSERT = """
INSERT INTO trade_metrics AS m (symbol, window_start, window_end, vwap, price_stddev, trade_count, volume,
                                volatility_alert, volume_spike, updated_at)
SELECT symbol, window_start, window_end,
       round(sum_pq / sum_q, 20),
       stddev,
       n, sum_q,
       coalesce(stddev > threshold, false),
       false,
       now()
FROM (
    SELECT symbol, window_start, window_end, n, sum_pq, sum_q, threshold,
           CASE WHEN n > 1 THEN sqrt(greatest((sum_pp - sum_p * sum_p / n) / (n - 1), 0))::double precision END AS stddev
    FROM ({sums}) AS u(symbol, window_start, window_end, n, sum_pq, sum_q, sum_p, sum_pp, threshold)
) x
ON CONFLICT (symbol, window_start) DO UPDATE SET
    window_end = EXCLUDED.window_end, vwap = EXCLUDED.vwap, price_stddev = EXCLUDED.price_stddev,
    trade_count = EXCLUDED.trade_count, volume = EXCLUDED.volume,
    volatility_alert = EXCLUDED.volatility_alert, updated_at = EXCLUDED.updated_at
{only_changed}
"""
SPARK_SUMS = """SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::bigint[], %s::numeric[],
                              %s::numeric[], %s::numeric[], %s::numeric[], %s::double precision[])"""
# (symbols[], window_starts[], thresholds[]): the 1-minute windows recomputed from the rows in `trades`
RAW_SUMS = """
SELECT t.symbol, w.window_start, w.window_start + interval '1 minute', count(*), sum(t.price * t.quantity),
       sum(t.quantity), sum(t.price), sum(t.price * t.price), w.threshold
FROM unnest(%s::text[], %s::timestamptz[], %s::double precision[]) AS w(symbol, window_start, threshold)
JOIN trades t ON t.symbol = w.symbol AND t.event_type = 'trade'
             AND t.event_time >= w.window_start AND t.event_time < w.window_start + interval '1 minute'
GROUP BY t.symbol, w.window_start, w.threshold"""
TRADE_UPSERT = _TRADE_UPSERT.format(sums=SPARK_SUMS, only_changed="")
TRADE_REPAIR = _TRADE_UPSERT.format(
    sums=RAW_SUMS,
    only_changed="""WHERE (m.trade_count, m.volume, m.vwap, m.price_stddev, m.volatility_alert)
    IS DISTINCT FROM (EXCLUDED.trade_count, EXCLUDED.volume, EXCLUDED.vwap, EXCLUDED.price_stddev,
                      EXCLUDED.volatility_alert)
RETURNING m.symbol, m.window_start""",
)

# The 1-minute windows of rows written since the last look that Spark may not have counted: ingested more
# than `late` after their event time (backfilled, replayed, slowed down), or written after Spark's watermark
# had passed their event time (the worker was behind: the window may have been repaired without them); with
# the first such row's write time, from where a restart must look again to find the window.
LATE_WINDOWS = """
SELECT symbol, time_bucket('1 minute', event_time), min(inserted_at)
FROM trades
WHERE inserted_at > %(since)s AND inserted_at <= %(until)s AND event_type = 'trade'
  AND (ingestion_ts > event_time + %(late)s OR event_time < coalesce(%(watermark)s, '-infinity'::timestamptz))
GROUP BY 1, 2
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

# (symbol, window_start, window_end, n, sum_spread, max_spread, min_spread)
SPREAD_UPSERT = """
INSERT INTO spread_metrics AS m (symbol, window_start, window_end, avg_spread, max_spread, min_spread, update_count,
                                 spread_warning, updated_at)
SELECT symbol, window_start, window_end, round(sum_spread / n, 20), max_spread, min_spread, n,
       max_spread > %s * min_spread, now()
FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::bigint[], %s::numeric[], %s::numeric[],
            %s::numeric[]) AS u(symbol, window_start, window_end, n, sum_spread, max_spread, min_spread)
ON CONFLICT (symbol, window_start) DO UPDATE SET
    window_end = EXCLUDED.window_end, avg_spread = EXCLUDED.avg_spread, max_spread = EXCLUDED.max_spread,
    min_spread = EXCLUDED.min_spread, update_count = EXCLUDED.update_count,
    spread_warning = EXCLUDED.spread_warning, updated_at = EXCLUDED.updated_at
"""

PROGRESS_INSERT = """
INSERT INTO stream_progress (query, batch_id, run_id, batch_timestamp, input_rows, dropped_late, duration_ms, watermark)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (query, run_id, batch_id) DO UPDATE SET input_rows = EXCLUDED.input_rows,
    dropped_late = EXCLUDED.dropped_late, duration_ms = EXCLUDED.duration_ms, watermark = EXCLUDED.watermark
"""

# what the streaming job's own sinks counted in a batch or round (dead letters, repaired windows)
PROGRESS_COUNTS = """
INSERT INTO stream_progress AS p (query, batch_id, run_id, batch_timestamp, input_rows, dropped_late, duration_ms,
                                  dead_letters, repaired_windows)
VALUES (%(query)s, %(batch_id)s, %(run_id)s, now(), %(input_rows)s, 0, %(duration_ms)s, %(dead_letters)s,
        %(repaired_windows)s)
ON CONFLICT (query, run_id, batch_id) DO UPDATE SET dead_letters = EXCLUDED.dead_letters,
    repaired_windows = EXCLUDED.repaired_windows
"""

# where Spark's trade query stands: the watermark of its latest batch (of the running job: a job started
# afresh on old data has a lower one than its predecessors had), and when
TRADE_WATERMARK = """
SELECT watermark, batch_timestamp FROM stream_progress WHERE query = %s AND watermark IS NOT NULL
ORDER BY batch_timestamp DESC LIMIT 1
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
