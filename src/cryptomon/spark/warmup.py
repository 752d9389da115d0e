"""The job's code warmed before its first micro-batch: the first batch read from Kafka compiles the plan's
generated code and leaves the JVM's JIT the parsing, decimal and aggregation paths to compile under the
load of the market (at 20,000 events/s a first batch took 20-28 s, the next ones 5-6 s). Summing a batch
of made-up records, both topics' kinds, once before the query starts does that work while nothing waits.
Nothing is written: the sums are collected and dropped."""

from __future__ import annotations

import logging
import time

from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.settings import Settings
from cryptomon.spark import queries

log = logging.getLogger(__name__)

SYMBOL = "WARMUPUSDT"


def records(spark, n: int, now_ms: int):
    """n Kafka-like records (the source's columns), two trades for each bookTicker, of one made-up symbol,
    ids and times from the row number, 10 ms apart (a few windows per 20,000 records)."""
    from pyspark.sql import functions as F

    i = F.col("id")
    t = now_ms - 60_000 - n * 10 + i * 10  # event and ingestion times 10 ms apart, before the Kafka time
    trade = F.format_string(
        '{"e":"trade","E":%d,"s":"' + SYMBOL + '","t":%d,"p":"%d.%08d","q":"0.%08d","T":%d,"m":%s,'
        '"ingestion_timestamp":%d}',
        t, i, 100 + i % 7, i % 100_000_000, 1 + i % 99_999_999, t, F.when(i % 2 == 0, "true").otherwise("false"),
        t + 5,
    )  # fmt: skip
    book = F.format_string(
        '{"u":%d,"s":"' + SYMBOL + '","b":"%d.00000000","B":"1.00000000","a":"%d.00010000","A":"1.00000000",'
        '"ingestion_timestamp":%d}',
        i, 100 + i % 7, 100 + i % 7, t + 5,
    )  # fmt: skip
    is_book = i % 3 == 2
    return spark.range(n).select(
        F.when(is_book, topic_name(BOOK_TICKER)).otherwise(topic_name(TRADES)).alias("topic"),
        F.lit(0).alias("partition"),
        i.alias("offset"),
        F.lit(SYMBOL).cast("binary").alias("key"),
        F.when(is_book, book).otherwise(trade).cast("binary").alias("value"),
        F.timestamp_millis(F.lit(now_ms)).alias("timestamp"),
    )


def warm_up(spark, settings: Settings) -> int:
    """Sum `spark_warmup_records` made-up records as a micro-batch is summed; returns the groups found."""
    if settings.spark_warmup_records <= 0:
        return 0
    began = time.monotonic()
    df = records(spark, settings.spark_warmup_records, int(time.time() * 1000))
    groups = queries.batch_sums(queries.batch_frame(df, settings)).collect()
    log.info("warmed up on %d made-up records in %.1f s", settings.spark_warmup_records, time.monotonic() - began)
    return len(groups)
