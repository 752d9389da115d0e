"""`cryptomon spark`: Spark Structured Streaming metrics from Kafka into TimescaleDB.

Query 1, trade metrics: 1-minute tumbling windows per symbol over `trade` events (aggTrade events are
aggregates of the same trades and are not counted twice), on event time (`T`).
Query 2, spread metrics: 30-second tumbling windows per symbol over bookTicker events, on `ingestion_ts`.
Both: watermark CRYPTOMON_SPARK_WATERMARK_SECONDS, trigger every CRYPTOMON_SPARK_TRIGGER_SECONDS, output
mode update, and each micro-batch upserts the windows it changed (ON CONFLICT ... DO UPDATE), so partial
windows are corrected as data arrives and a replayed micro-batch leaves the same rows. Checkpoints make a
restart continue where the job stopped. Rows dropped as later than the watermark are counted from Spark's
progress reports, logged and stored per batch in `stream_progress`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime

import psycopg

from cryptomon.backoff import Backoff
from cryptomon.diskguard import DiskGuard
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADE, TRADES
from cryptomon.settings import Settings
from cryptomon.spark import metrics as M

log = logging.getLogger("cryptomon.spark")

TRADES_QUERY, SPREAD_QUERY = "trade_metrics", "spread_metrics"


def connector_jars(settings: Settings) -> list[str]:
    jars = sorted(str(p) for p in (settings.deps_dir / "spark-jars").glob("*.jar"))
    if not any("spark-sql-kafka" in j for j in jars):
        raise RuntimeError(
            f"Spark's Kafka connector is not in {settings.deps_dir / 'spark-jars'}: run scripts/setup.sh"
        )
    return jars


def build_session(settings: Settings, app_name: str = "cryptomon-metrics"):
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName(app_name)
        .config("spark.jars", ",".join(connector_jars(settings)))
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.caseSensitive", "true")  # Binance uses both `t` (trade id) and `T` (trade time)
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        .config("spark.driver.memory", "1g")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if settings.spark_ui_port:
        builder = builder.config("spark.ui.port", str(settings.spark_ui_port))
    else:
        builder = builder.config("spark.ui.enabled", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _kafka_source(spark, settings: Settings, topic: str, max_offsets: int | None = None):
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(max_offsets or settings.spark_max_offsets_per_trigger))
        # retention (7 days) may delete offsets a long-stopped job still wanted: go on, with a warning
        .option("failOnDataLoss", "false")
        .load()
    )


def trade_windows(spark, settings: Settings, max_offsets: int | None = None):
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, LongType, StringType, StructField, StructType

    schema = StructType(
        [
            StructField("e", StringType()),
            StructField("s", StringType()),
            StructField("t", LongType()),
            StructField("p", StringType()),
            StructField("q", StringType()),
            StructField("T", LongType()),
            StructField("m", BooleanType()),
            StructField("ingestion_timestamp", LongType()),
        ]
    )
    d = F.from_json(F.col("value").cast("string"), schema).alias("d")
    trades = (
        _kafka_source(spark, settings, topic_name(TRADES), max_offsets)
        .select(d)
        .select("d.*")
        .where((F.col("e") == TRADE) & F.col("s").isNotNull() & F.col("t").isNotNull() & F.col("T").isNotNull())
        .select(
            F.col("s").alias("symbol"),
            F.col("t").alias("trade_id"),
            F.timestamp_millis("T").alias("event_time"),
            F.col("p").cast("decimal(18,8)").alias("p"),
            F.col("q").cast("decimal(18,8)").alias("q"),
        )
        .where(F.col("p").isNotNull() & F.col("q").isNotNull())
        .withWatermark("event_time", f"{settings.spark_watermark_seconds} seconds")
        # a trade id counted once even if Kafka holds it twice
        .dropDuplicatesWithinWatermark(["symbol", "trade_id"])
    )
    return (
        trades.groupBy(F.col("symbol"), F.window("event_time", "1 minute"))
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(F.col("p") * F.col("q")).alias("sum_pq"),
            F.sum("q").alias("sum_q"),
            F.sum("p").alias("sum_p"),
            F.sum(F.col("p") * F.col("p")).alias("sum_pp"),
        )
        .select(
            "symbol",
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "n",
            "sum_pq",
            "sum_q",
            "sum_p",
            "sum_pp",
        )
    )


def spread_windows(spark, settings: Settings, max_offsets: int | None = None):
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    schema = StructType(
        [
            StructField("u", LongType()),
            StructField("s", StringType()),
            StructField("b", StringType()),
            StructField("a", StringType()),
            StructField("ingestion_timestamp", LongType()),
        ]
    )
    d = F.from_json(F.col("value").cast("string"), schema).alias("d")
    books = (
        _kafka_source(spark, settings, topic_name(BOOK_TICKER), max_offsets)
        .select(d)
        .select("d.*")
        .where(F.col("s").isNotNull() & F.col("ingestion_timestamp").isNotNull())
        .select(
            F.col("s").alias("symbol"),
            F.timestamp_millis("ingestion_timestamp").alias("ingestion_ts"),
            (F.col("a").cast("decimal(18,8)") - F.col("b").cast("decimal(18,8)")).alias("spread"),
        )
        .where(F.col("spread").isNotNull())
        .withWatermark("ingestion_ts", f"{settings.spark_watermark_seconds} seconds")
    )
    return (
        books.groupBy(F.col("symbol"), F.window("ingestion_ts", "30 seconds"))
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum("spread").alias("sum_spread"),
            F.max("spread").alias("max_spread"),
            F.min("spread").alias("min_spread"),
        )
        .select(
            "symbol",
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "n",
            "sum_spread",
            "max_spread",
            "min_spread",
        )
    )


class MetricsWriter:
    """foreachBatch sinks: the aggregated windows of a micro-batch are few (windows x symbols), so they
    are collected on the driver and upserted in one statement, in one transaction."""

    def __init__(self, settings: Settings):
        self.s = settings
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # the two queries' batches may run concurrently
        self.db_failures = 0
        self.disk = DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb)
        self.stopping = threading.Event()

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.s.pg_dsn, autocommit=True, application_name="cryptomon-spark")
        return self._conn

    def _execute(self, work, retry: bool = True) -> None:
        """Run `work` in one transaction. While the database is unreachable (down, restarting), the batch
        waits and retries with backoff instead of failing the query: the job stays up, the batch is not
        committed to the checkpoint until its rows are in, and it resumes by itself. Other errors raise:
        Spark fails the batch, and the restarted job replays it from the checkpoint. On a nearly full disk
        under the state folder (PostgreSQL's data, the checkpoints) the batch waits the same way."""
        backoff = Backoff(0.5, self.s.db_retry_max, reset_after=0)
        with self._lock:
            while True:
                if low := self.disk.check():
                    delay = backoff.next_delay()
                    log.error("%s: holding this micro-batch's write, retrying in %.1fs", low, delay)
                    self.stopping.wait(delay)
                    if self.stopping.is_set():
                        raise RuntimeError(f"stopping with a micro-batch unwritten ({low}): replayed on restart")
                    continue
                try:
                    with self._db().transaction():
                        work(self._conn)
                    return
                except psycopg.OperationalError as exc:
                    self._conn = None
                    self.db_failures += 1
                    if not retry or self.stopping.is_set():
                        raise  # at shutdown: the uncommitted batch is replayed by the next start
                    delay = backoff.next_delay()
                    log.warning(
                        "database unavailable (%s): retrying this micro-batch's write in %.1fs",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                        delay,
                    )
                    self.stopping.wait(delay)

    def write_trades(self, batch_df, batch_id: int) -> None:
        rows = batch_df.collect()
        if not rows:
            return
        data = [
            (
                r.symbol,
                r.window_start,
                r.window_end,
                r.n,
                r.sum_pq,
                r.sum_q,
                r.sum_p,
                r.sum_pp,
                self.s.volatility_threshold_for(r.symbol),
            )
            for r in rows
        ]
        since = min(r.window_start for r in rows)
        symbols = sorted({r.symbol for r in rows})

        def work(conn):
            conn.execute(M.TRADE_UPSERT, M.columns(data))
            conn.execute(
                M.VOLUME_SPIKE_UPDATE,
                {
                    "k": self.s.volume_spike_factor,
                    "n": self.s.volume_spike_windows,
                    "m": min(self.s.volume_spike_min_windows, self.s.volume_spike_windows),
                    "symbols": symbols,
                    "since": since,
                },
            )

        self._execute(work)
        log.debug("trade batch %d: %d windows", batch_id, len(rows))

    def write_spreads(self, batch_df, batch_id: int) -> None:
        rows = batch_df.collect()
        if not rows:
            return
        data = [(r.symbol, r.window_start, r.window_end, r.n, r.sum_spread, r.max_spread, r.min_spread) for r in rows]
        self._execute(lambda conn: conn.execute(M.SPREAD_UPSERT, [self.s.spread_warning_factor, *M.columns(data)]))
        log.debug("spread batch %d: %d windows", batch_id, len(rows))

    def record_progress(self, p: dict) -> None:
        dropped = sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", []))
        if dropped:
            log.warning(
                "%s: %d events later than the watermark were dropped in batch %s",
                p.get("name"),
                dropped,
                p.get("batchId"),
            )
        wm = p.get("eventTime", {}).get("watermark")
        row = (
            p.get("name"),
            p.get("batchId"),
            p.get("runId"),
            _ts(p["timestamp"]),
            p.get("numInputRows", 0),
            dropped,
            p.get("batchDuration", 0),
            _ts(wm) if wm else None,
        )
        try:
            self._execute(lambda conn: conn.execute(M.PROGRESS_INSERT, row), retry=False)
        except psycopg.Error as exc:  # progress is informative: never fail the job for it
            log.warning("could not record progress: %s", exc)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def start_queries(
    spark,
    settings: Settings,
    writer: MetricsWriter,
    trigger: dict | None = None,
    max_offsets: dict[str, int] | None = None,
):
    """Start both queries; returns them. `trigger` defaults to processingTime every N seconds;
    `max_offsets` caps each query's batch ({query name: messages}), for the benchmark."""
    max_offsets = max_offsets or {}
    trigger = trigger or {"processingTime": f"{settings.spark_trigger_seconds} seconds"}
    checkpoints = settings.spark_checkpoints
    out = []
    for name, frame, sink in (
        (TRADES_QUERY, trade_windows(spark, settings, max_offsets.get(TRADES_QUERY)), writer.write_trades),
        (SPREAD_QUERY, spread_windows(spark, settings, max_offsets.get(SPREAD_QUERY)), writer.write_spreads),
    ):
        out.append(
            frame.writeStream.queryName(name)
            .outputMode("update")
            .foreachBatch(sink)
            .trigger(**trigger)
            .option("checkpointLocation", str(checkpoints / name))
            .start()
        )
    return out


def install_progress_listener(spark, writer: MetricsWriter) -> None:
    import json

    from pyspark.sql.streaming import StreamingQueryListener

    class Listener(StreamingQueryListener):
        def onQueryStarted(self, event):
            log.info("query %s started (run %s)", event.name, event.runId)

        def onQueryProgress(self, event):
            writer.record_progress(json.loads(event.progress.json))

        def onQueryIdle(self, event):
            pass

        def onQueryTerminated(self, event):
            if event.exception:
                log.error("query %s failed: %s", event.id, event.exception)

    spark.streams.addListener(Listener())


def stop_between_batches(query, timeout: float = 30.0) -> None:
    """Stop a query when no micro-batch is running, so that no batch is interrupted half-way.

    A batch can still start between the check and the stop; it is then interrupted and, as it was not
    committed, replayed from the checkpoint by the next start. py4j would log the interruption of its
    foreachBatch callback as an exception with a traceback: during a requested stop that is expected,
    so that logger is silenced."""
    logging.getLogger("py4j.clientserver").setLevel(logging.CRITICAL)
    deadline = time.monotonic() + timeout
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.05)
    if query.isActive:
        query.stop()


def main(settings: Settings, trigger: dict | None = None) -> None:
    spark = build_session(settings)
    writer = MetricsWriter(settings)
    install_progress_listener(spark, writer)
    queries = start_queries(spark, settings, writer, trigger)
    log.info(
        "streaming: %s; checkpoints in %s; Spark UI on :%s",
        [q.name for q in queries],
        settings.spark_checkpoints,
        settings.spark_ui_port or "off",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    failed: list = []
    try:
        # until a signal, a failed query (so that a supervisor restarts the job), or every query done
        # (with --available-now; a streaming query never finishes by itself)
        while not stop.is_set() and not failed and any(q.isActive for q in queries):
            stop.wait(1.0)
            failed = [q for q in queries if not q.isActive and q.exception()]
        for q in failed:
            log.error("query %s stopped: %s", q.name, q.exception())
    finally:
        writer.stopping.set()
        for q in queries:
            stop_between_batches(q)  # the next start resumes from the checkpoint
        spark.stop()
    if failed:
        raise SystemExit(1)
