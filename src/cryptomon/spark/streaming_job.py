"""`cryptomon spark`: the Structured Streaming job, from Kafka into TimescaleDB. This module builds the
session, starts the one query (both topics, `queries.py`) with its sink (`writer.py`), and stops it between
micro-batches; the README's Spark section says what it computes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from cryptomon.errors import ConfigError
from cryptomon.settings import Settings
from cryptomon.spark.pacing import Pacer
from cryptomon.spark.queries import METRICS_QUERY, source
from cryptomon.spark.warmup import warm_up
from cryptomon.spark.writer import MetricsWriter
from cryptomon.stopping import stop_on_signals

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
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.driver.extraJavaOptions", settings.spark_driver_java_options)
        .config("spark.ui.showConsoleProgress", "false")
        # what the driver remembers of past jobs for the UI and status API (kept even with the UI off)
        .config("spark.ui.retainedJobs", str(settings.spark_status_retained))
        .config("spark.ui.retainedStages", str(settings.spark_status_retained))
        .config("spark.sql.ui.retainedExecutions", str(settings.spark_status_retained))
        # the driver's RPC and block manager listen on this address only (loopback unless a cluster's
        # executors must reach it); Spark's UI binds to SPARK_LOCAL_IP, else to every interface
        .config("spark.driver.bindAddress", settings.spark_driver_bind_address or settings.spark_driver_host)
        .config("spark.driver.host", settings.spark_driver_host)
    )
    os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_driver_host)  # read by the JVM PySpark starts
    # glibc gives threads that allocate at once malloc arenas of their own (up to 8 a core), where the JVM's
    # native allocations (compression codecs, Netty, the compiler) can fragment: with its heap committed whole,
    # the job's JVM still grew ~290 MiB/h for half an hour of the market soak (the cause not isolated)
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    if settings.spark_ui_port:
        builder = builder.config("spark.ui.port", str(settings.spark_ui_port))
    else:
        builder = builder.config("spark.ui.enabled", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def start_query(
    spark, settings: Settings, writer: MetricsWriter, trigger: dict | None = None, max_offsets: int | None = None
):
    """Start the job's query; returns it. `trigger` defaults to one batch every N seconds, started the
    offset after each multiple of N by the sink (pacing.py; without an offset, Spark's processingTime);
    `max_offsets` caps its batch (messages of both topics), for the benchmark."""
    if trigger is None and settings.spark_trigger_offset_seconds > 0:
        writer.pacer = Pacer(settings.spark_trigger_seconds, settings.spark_trigger_offset_seconds)
        trigger = {"processingTime": "0 seconds"}
        # with no new records Spark asks Kafka again after this (default 10 ms: a hundred asks a second)
        spark.conf.set(
            "spark.sql.streaming.pollingDelay", f"{round(min(settings.spark_trigger_seconds, 1.0) * 1000)}ms"
        )
    trigger = trigger or {"processingTime": f"{settings.spark_trigger_seconds} seconds"}
    return (
        source(spark, settings, max_offsets).writeStream.queryName(METRICS_QUERY)
        .foreachBatch(writer.write_batch)
        .trigger(**trigger)
        .option("checkpointLocation", str(settings.spark_checkpoints / METRICS_QUERY))
        .start()
    )  # fmt: skip


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
    install_progress_listener(spark, writer)
    warm_up(spark, settings)
    query = start_query(spark, settings, writer, trigger)
    log.info("streaming: %s; checkpoint in %s; Spark UI on :%s", query.name, settings.spark_checkpoints,
             settings.spark_ui_port or "off")  # fmt: skip
    stop = threading.Event()
    stop_on_signals(stop)
    failed = None
    try:
        # until a signal, a failed query (so that a supervisor restarts the job), or the query done (with
        # --available-now; a streaming query never finishes by itself)
        while not stop.is_set() and query.isActive:
            stop.wait(1.0)
        failed = None if query.isActive else query.exception()
        if failed:
            log.error("query %s stopped: %s", query.name, failed)
    finally:
        writer.stopping.set()
        stop_between_batches(query)  # the next start resumes from the checkpoint
        spark.stop()
    if failed:
        raise SystemExit(1)
