"""`cryptomon spark`: the Structured Streaming job, from Kafka into TimescaleDB. This module builds the
session, starts the queries (`queries.py`) with their sinks (`writer.py`) and the repair loop
(`repair.py`), and stops them between micro-batches; the README's Spark section says what each computes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from cryptomon.errors import ConfigError
from cryptomon.settings import Settings
from cryptomon.spark.queries import (
    POISON_QUERY,
    SPREAD_QUERY,
    TRADES_QUERY,
    poison_records,
    spread_windows,
    trade_windows,
)
from cryptomon.spark.repair import Repairer
from cryptomon.spark.writer import MetricsWriter

log = logging.getLogger(__name__)


def connector_jars(settings: Settings) -> list[str]:
    jars = sorted(str(p) for p in (settings.deps_dir / "spark-jars").glob("*.jar"))
    if not any("spark-sql-kafka" in j for j in jars):
        raise ConfigError(f"Spark's Kafka connector is not in {settings.deps_dir / 'spark-jars'}: run scripts/setup.sh")
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
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.ui.showConsoleProgress", "false")
        # the driver's RPC and block manager listen on this address only (loopback unless a cluster's
        # executors must reach it); Spark's UI binds to SPARK_LOCAL_IP, else to every interface
        .config("spark.driver.bindAddress", settings.spark_driver_bind_address or settings.spark_driver_host)
        .config("spark.driver.host", settings.spark_driver_host)
    )
    os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_driver_host)  # read by the JVM PySpark starts
    if settings.spark_state_memory_mb:  # RocksDB's block cache and memtables, bounded together for every store
        builder = builder.config("spark.sql.streaming.stateStore.rocksdb.boundedMemoryUsage", "true").config(
            "spark.sql.streaming.stateStore.rocksdb.maxMemoryUsageMB", str(settings.spark_state_memory_mb)
        )
    if settings.spark_ui_port:
        builder = builder.config("spark.ui.port", str(settings.spark_ui_port))
    else:
        builder = builder.config("spark.ui.enabled", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


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
