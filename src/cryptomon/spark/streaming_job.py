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

import json
import logging
import signal
import threading
import time
import uuid
from datetime import datetime

import psycopg

from cryptomon.backoff import Backoff
from cryptomon.diskguard import DiskGuard
from cryptomon.kafka.topics import topic_name
from cryptomon.names import AGG_TRADE, BOOK_TICKER, TRADE, TRADES
from cryptomon.settings import Settings
from cryptomon.spark import metrics as M
from cryptomon.spark.repair import Repairer

log = logging.getLogger("cryptomon.spark")

TRADES_QUERY, SPREAD_QUERY, POISON_QUERY = "trade_metrics", "spread_metrics", "poison_records"


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


def starting_offsets(setting: str, topics: list[str]) -> str:
    """earliest / latest as they are; Spark's JSON of offsets cut down to the topics a query reads (Spark
    wants exactly the partitions of those)."""
    if not setting.startswith("{"):
        return setting
    offsets = json.loads(setting)
    return json.dumps({t: offsets[t] for t in topics})


def _kafka_source(spark, settings: Settings, topic: str, max_offsets: int | None = None):
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets(settings.spark_starting_offsets, topic.split(",")))
        .option("maxOffsetsPerTrigger", str(max_offsets or settings.spark_max_offsets_per_trigger))
        # retention (7 days) may delete offsets a long-stopped job still wanted: go on, with a warning
        .option("failOnDataLoss", "false")
        .load()
    )


# Spark's types for Binance's values (bounds in cryptomon/binance.py), chosen so that every sum is exact:
#   price      DECIMAL(16,8): < 1e8, 8 decimals            quantity  DECIMAL(20,8): < 1e12, 8 decimals
#   p*q        DECIMAL(37,16) (Spark: p1+p2+1, s1+s2): < 1e20, exact
#   p*p        DECIMAL(33,16): < 1e16, exact
#   sums       DECIMAL(38,16) for sum(p*q) and sum(p*p), DECIMAL(30,8) for sum(q), DECIMAL(26,8) for sum(p)
#              (Spark: p+10, capped at 38): sum(p*q) < 1e22 holds 10,000 trades of the extreme
#              notional (1e7 x 1e11 = 1e18) in one window and ~1e13 of a real one (<= 1e9 USDT); sum(p*p)
#              < 1e22 holds 1e6 trades at price 1e8.
# Casts are try_cast (NULL instead of an error under ANSI mode: the row goes to the dead letters, see
# poison_records) and sums try_sum (NULL on overflow: the window is then computed from the raw rows in
# PostgreSQL, whose NUMERIC has no such bound; see repair.py).
PRICE_TYPE, QUANTITY_TYPE = "decimal(16,8)", "decimal(20,8)"
KAFKA_COLUMNS = ("topic", "partition", "offset", "key", "value")  # a dead letter's coordinates and bytes


def _trades(df):
    """Kafka records of binance.trades -> typed columns, the Kafka coordinates, and `ok`: the record is a
    trade the metrics can use (an aggTrade is fine and not used; anything else is poison)."""
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
        ]
    )
    d = F.from_json(F.col("value").cast("string"), schema)
    p, q = d["p"].try_cast(PRICE_TYPE), d["q"].try_cast(QUANTITY_TYPE)
    ok = d["s"].isNotNull() & d["t"].isNotNull() & d["T"].isNotNull() & (p > 0) & (q > 0)
    return df.select(
        *KAFKA_COLUMNS,
        d["e"].alias("e"),
        d["s"].alias("symbol"),
        d["t"].alias("trade_id"),
        F.timestamp_millis(d["T"]).alias("event_time"),
        p.alias("p"),
        q.alias("q"),
        F.coalesce(ok, F.lit(False)).alias("ok"),
    )


def _books(df):
    """Kafka records of binance.book_ticker -> symbol, ingestion time, spread, the Kafka coordinates, `ok`."""
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
    d = F.from_json(F.col("value").cast("string"), schema)
    bid, ask = d["b"].try_cast(PRICE_TYPE), d["a"].try_cast(PRICE_TYPE)
    ok = d["s"].isNotNull() & d["ingestion_timestamp"].isNotNull() & (bid > 0) & (ask > 0)
    return df.select(
        *KAFKA_COLUMNS,
        d["s"].alias("symbol"),
        F.timestamp_millis(d["ingestion_timestamp"]).alias("ingestion_ts"),
        (ask - bid).alias("spread"),
        F.coalesce(ok, F.lit(False)).alias("ok"),
    )


def trade_windows(spark, settings: Settings, max_offsets: int | None = None):
    from pyspark.sql import functions as F

    trades = (
        _trades(_kafka_source(spark, settings, topic_name(TRADES), max_offsets))
        .where((F.col("e") == TRADE) & F.col("ok"))
        .select("symbol", "trade_id", "event_time", "p", "q")
        .withWatermark("event_time", f"{settings.spark_watermark_seconds} seconds")
        # a trade id counted once even if Kafka holds it twice
        .dropDuplicatesWithinWatermark(["symbol", "trade_id"])
    )
    return (
        trades.groupBy(F.col("symbol"), F.window("event_time", "1 minute"))
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.try_sum(F.col("p") * F.col("q")).alias("sum_pq"),
            F.try_sum("q").alias("sum_q"),
            F.try_sum("p").alias("sum_p"),
            F.try_sum(F.col("p") * F.col("p")).alias("sum_pp"),
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

    books = (
        _books(_kafka_source(spark, settings, topic_name(BOOK_TICKER), max_offsets))
        .where(F.col("ok"))
        .select("symbol", "ingestion_ts", "spread")
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


def poison_records(spark, settings: Settings, max_offsets: int | None = None):
    """The records of both topics the metric queries cannot use, with the reason: they go to dead_letters
    (a third query: a streaming aggregation cannot send its rejects anywhere), and the queries go on."""
    from pyspark.sql import functions as F

    trades_topic, books_topic = topic_name(TRADES), topic_name(BOOK_TICKER)
    src = _kafka_source(spark, settings, f"{trades_topic},{books_topic}", max_offsets)
    bad_trades = (
        _trades(src.where(F.col("topic") == trades_topic))
        .where(F.col("e").isNull() | ~F.col("e").isin(TRADE, AGG_TRADE) | ((F.col("e") == TRADE) & ~F.col("ok")))
        .select(
            *KAFKA_COLUMNS,
            F.when(F.col("e").isNull(), "not a JSON event (no event type, or a field of the wrong type)")
            .when(~F.col("e").isin(TRADE, AGG_TRADE), F.concat(F.lit("unknown event type "), F.col("e")))
            .otherwise(
                f"a trade without symbol, id or time, or a price/quantity that is not a positive decimal of "
                f"{PRICE_TYPE}/{QUANTITY_TYPE}"
            )
            .alias("reason"),
        )
    )
    bad_books = (
        _books(src.where(F.col("topic") == books_topic))
        .where(~F.col("ok"))
        .select(
            *KAFKA_COLUMNS,
            F.lit(
                f"a bookTicker without symbol or ingestion time, or a bid/ask that is not a positive {PRICE_TYPE}"
            ).alias("reason"),
        )
    )
    return bad_trades.unionByName(bad_books)


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
        self.repair: Repairer | None = None  # gets the windows whose Spark sums overflowed
        self.dead_letters = 0
        self.run_id = uuid.uuid4().hex

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.s.pg_dsn, autocommit=True, application_name="cryptomon-spark")
        return self._conn

    def in_transaction(self, work, retry: bool = True) -> None:
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
        rows: list = []
        overflowed: list = []
        for r in batch_df.collect():
            (overflowed if None in (r.sum_pq, r.sum_q, r.sum_p, r.sum_pp) else rows).append(r)
        if overflowed:
            log.warning("%d trade windows overflowed Spark's DECIMAL(38,16) sums: computed from the raw rows "
                        "instead", len(overflowed))  # fmt: skip
            if self.repair is not None:
                for r in overflowed:
                    self.repair.request(r.symbol, r.window_start)
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

        self.in_transaction(work)
        log.debug("trade batch %d: %d windows", batch_id, len(rows))

    def write_spreads(self, batch_df, batch_id: int) -> None:
        rows = batch_df.collect()
        if not rows:
            return
        data = [(r.symbol, r.window_start, r.window_end, r.n, r.sum_spread, r.max_spread, r.min_spread) for r in rows]
        self.in_transaction(
            lambda conn: conn.execute(M.SPREAD_UPSERT, [self.s.spread_warning_factor, *M.columns(data)])
        )
        log.debug("spread batch %d: %d windows", batch_id, len(rows))

    def write_dead_letters(self, batch_df, batch_id: int) -> None:
        rows = batch_df.collect()
        if not rows:
            return
        data = [(r.topic, r.partition, r.offset, r.key, r.value, f"spark: {r.reason}") for r in rows]
        counts = {"query": POISON_QUERY, "batch_id": batch_id, "run_id": self.run_id, "input_rows": len(rows),
                  "duration_ms": 0, "dead_letters": len(rows), "repaired_windows": 0}  # fmt: skip

        def work(conn):
            conn.execute(M.DEAD_LETTER_INSERT, M.columns(data))
            conn.execute(M.PROGRESS_COUNTS, counts)

        self.in_transaction(work)
        self.dead_letters += len(rows)
        for r in rows[:5]:
            log.warning("dead letter %s[%d]@%d: %s | %.200r", r.topic, r.partition, r.offset, r.reason, r.value)
        log.warning("batch %d: %d records the metrics cannot use sent to dead_letters", batch_id, len(rows))

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
            self.in_transaction(lambda conn: conn.execute(M.PROGRESS_INSERT, row), retry=False)
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
    for name, frame, sink, mode in (
        (TRADES_QUERY, trade_windows(spark, settings, max_offsets.get(TRADES_QUERY)), writer.write_trades, "update"),
        (SPREAD_QUERY, spread_windows(spark, settings, max_offsets.get(SPREAD_QUERY)), writer.write_spreads, "update"),
        (POISON_QUERY, poison_records(spark, settings, max_offsets.get(POISON_QUERY)), writer.write_dead_letters,
         "append"),
    ):  # fmt: skip
        out.append(
            frame.writeStream.queryName(name)
            .outputMode(mode)
            .foreachBatch(sink)
            .trigger(**trigger)
            .option("checkpointLocation", str(checkpoints / name))
            .start()
        )
    return out


def install_progress_listener(spark, writer: MetricsWriter) -> None:
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
    writer.repair = Repairer(settings, writer.in_transaction, TRADES_QUERY, settings.spark_repair_interval)
    install_progress_listener(spark, writer)
    queries = start_queries(spark, settings, writer, trigger)
    repair = threading.Thread(target=writer.repair.run, name="repair", daemon=True)
    repair.start()
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
        writer.repair.stopping.set()
        for q in queries:
            stop_between_batches(q)  # the next start resumes from the checkpoint
        spark.stop()
    if failed:
        raise SystemExit(1)
