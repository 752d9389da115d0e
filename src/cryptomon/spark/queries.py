"""The job's DataFrames: both topics read once per trigger, each micro-batch's Kafka records decoded into
typed columns once, and from them the batch's exact sums per trade and spread window and the records the
metrics cannot use (poison). The driver merges the sums into the metric tables (writer.py)."""

from __future__ import annotations

import json

from cryptomon.binance import limits
from cryptomon.binance.schema import AGG_TRADE, SYMBOL, TRADE
from cryptomon.kafka.security import spark_kafka_options
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.settings import Settings

METRICS_QUERY, POISON_QUERY = "metrics", "poison_records"  # the query; its dead letters' counts in stream_progress


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
        .options(**spark_kafka_options(settings))
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets(settings.spark_starting_offsets, topic.split(",")))
        .option("maxOffsetsPerTrigger", str(max_offsets or settings.spark_max_offsets_per_trigger))
        # retention (7 days) may delete offsets a long-stopped job still wanted: go on, with a warning
        .option("failOnDataLoss", "false")
        .load()
    )


# Spark's types for Binance's values (bounds in cryptomon/binance/limits.py), chosen so that every sum is exact:
#   price      DECIMAL(16,8): < 1e8, 8 decimals            quantity  DECIMAL(20,8): < 1e12, 8 decimals
#   p*q        DECIMAL(37,16) (Spark: p1+p2+1, s1+s2): < 1e20, exact
#   p*p        DECIMAL(33,16): < 1e16, exact
#   sums       DECIMAL(38,16) for sum(p*q) and sum(p*p), DECIMAL(30,8) for sum(q), DECIMAL(26,8) for sum(p)
#              (Spark: p+10, capped at 38): sum(p*q) < 1e22 holds 10,000 trades of the extreme
#              notional (1e7 x 1e11 = 1e18) in one window and ~1e13 of a real one (<= 1e9 USDT); sum(p*p)
#              < 1e22 holds 1e6 trades at price 1e8.
# These are one micro-batch's sums: the metric tables add them up in NUMERIC, which has no such bound.
# Casts are try_cast (NULL instead of an error under ANSI mode: the row goes to the dead letters, see
# rejects) and sums try_sum (NULL on overflow: the driver then sums that window's trades itself in Python's
# Decimal, see merge.py).
PRICE_TYPE, QUANTITY_TYPE = "decimal(16,8)", "decimal(20,8)"
KAFKA_COLUMNS = ("topic", "partition", "offset", "key", "value")  # a dead letter's coordinates and bytes


def _trades(df, skew_ms: int):
    """Kafka records of binance.trades -> typed columns, the Kafka coordinates, and `ok`: the record is a
    trade the metrics can use (an aggTrade is fine and not used; anything else is poison). The contract is
    the ingestion's and the worker's (cryptomon.binance.schema): a record outside it never reaches a window,
    and its times are not converted at all (a year-10000 time would fail the query). The
    ingestion time is bounded by the record's Kafka timestamp (the broker's append time), not the batch's
    clock, so that a replayed batch decides the same."""
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
    d = F.from_json(F.col("value").cast("string"), schema)
    p, q = d["p"].try_cast(PRICE_TYPE), d["q"].try_cast(QUANTITY_TYPE)
    ok = (
        _record_ok(d, "t", ("p", "q"), skew_ms)
        & _time_ok(d["T"], d["ingestion_timestamp"] + skew_ms)
        & (p > 0)
        & (q > 0)
    )
    ok = F.coalesce(ok, F.lit(False))
    return df.select(
        *KAFKA_COLUMNS,
        d["e"].alias("e"),
        d["s"].alias("symbol"),
        d["t"].alias("trade_id"),
        F.when(ok, F.timestamp_millis(d["T"])).alias("event_time"),
        p.alias("p"),
        q.alias("q"),
        ok.alias("ok"),
    )


def _record_ok(d, id_field: str, decimals: tuple[str, ...], skew_ms: int):
    """What every record of either topic must keep (schema.py): Binance's symbol format, ASCII decimals, a
    non-negative id, and an ingestion time no later than the record's Kafka timestamp (the broker's append
    time, the same on every replay) plus the skew."""
    from pyspark.sql import functions as F

    ok = d["s"].rlike(f"^{SYMBOL.pattern}$") & (d[id_field] >= 0)
    for name in decimals:
        ok = ok & _ascii_decimal(d[name])
    return ok & _time_ok(d["ingestion_timestamp"], F.unix_millis(F.col("timestamp")) + skew_ms)


def _ascii_decimal(text):
    """Digits 0-9 and one dot only: Java's decimal parsing also reads other scripts' digits (schema.py)."""
    return text.rlike(r"^[0-9]+(\.[0-9]+)?$")


def _time_ok(ms, latest):
    """An epoch-ms time between Binance's first year and `latest` (limits.FIRST_EVENT_MS, the skew)."""
    return (ms >= limits.FIRST_EVENT_MS) & (ms <= latest)


def _books(df, skew_ms: int):
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
    ok = _record_ok(d, "u", ("b", "a"), skew_ms) & (bid > 0) & (ask > 0)
    ok = F.coalesce(ok, F.lit(False))
    return df.select(
        *KAFKA_COLUMNS,
        d["s"].alias("symbol"),
        F.when(ok, F.timestamp_millis(d["ingestion_timestamp"])).alias("ingestion_ts"),
        (ask - bid).alias("spread"),
        ok.alias("ok"),
    )


def source(spark, settings: Settings, max_offsets: int | None = None):
    """Both topics, read once per trigger by the job's one query."""
    return _kafka_source(spark, settings, f"{topic_name(TRADES)},{topic_name(BOOK_TICKER)}", max_offsets)


def unseen(offsets: dict[tuple[str, int], int]):
    """The records at or after each partition's next offset to count (metric_offsets): a batch replayed
    after a crash, or a job started afresh from the earliest offsets, counts nothing twice. True without
    offsets (nothing counted yet)."""
    from pyspark.sql import functions as F

    cond = F.lit(True)
    for (topic, partition), next_offset in sorted(offsets.items()):
        cond = F.when((F.col("topic") == topic) & (F.col("partition") == partition),
                      F.col("offset") >= next_offset).otherwise(cond)  # fmt: skip
    return cond


def batch_frames(df, settings: Settings):
    """A micro-batch's Kafka records -> (trades, books) with typed columns and `ok`, parsed once."""
    from pyspark.sql import functions as F

    skew = settings.max_clock_skew_ms
    trades = _trades(df.where(F.col("topic") == topic_name(TRADES)), skew)
    books = _books(df.where(F.col("topic") == topic_name(BOOK_TICKER)), skew)
    return trades, books


def trade_sums(trades):
    """The batch's new trades' exact sums per (symbol, 1-minute window), a trade id counted once, with the
    window's lowest and highest id (what decides whether the job has counted any of them: trade_ids.py)."""
    from pyspark.sql import functions as F

    good = (
        trades.where((F.col("e") == TRADE) & F.col("ok"))
        .select("symbol", "trade_id", "event_time", "p", "q")
        .dropDuplicates(["symbol", "trade_id"])
    )
    return good.groupBy(F.col("symbol"), F.window("event_time", "1 minute")).agg(
        F.count(F.lit(1)).alias("n"),
        F.try_sum(F.col("p") * F.col("q")).alias("sum_pq"),
        F.try_sum("q").alias("sum_q"),
        F.try_sum("p").alias("sum_p"),
        F.try_sum(F.col("p") * F.col("p")).alias("sum_pp"),
        F.min("trade_id").alias("first_id"),
        F.max("trade_id").alias("last_id"),
    ).select("symbol", F.col("window.start").alias("window_start"), "n", "sum_pq", "sum_q", "sum_p", "sum_pp",
             "first_id", "last_id")  # fmt: skip


def trade_rows(trades, symbols: list[str]):
    """The batch's good trades of `symbols`, one per id: the windows whose sums the driver computes itself
    (some of their ids were counted before, their ids have holes, or Spark's sums overflowed)."""
    from pyspark.sql import functions as F

    return (
        trades.where((F.col("e") == TRADE) & F.col("ok") & F.col("symbol").isin(symbols))
        .select("symbol", "trade_id", "event_time", "p", "q")
        .dropDuplicates(["symbol", "trade_id"])
    )


def spread_sums(books):
    from pyspark.sql import functions as F

    return (
        books.where(F.col("ok"))
        .groupBy(F.col("symbol"), F.window("ingestion_ts", "30 seconds"))
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum("spread").alias("sum_spread"),
            F.max("spread").alias("max_spread"),
            F.min("spread").alias("min_spread"),
        )
        .select("symbol", F.col("window.start").alias("window_start"), "n", "sum_spread", "max_spread", "min_spread")
    )


def batch_ends(trades, books):
    """(topic, partition, last offset) of the batch's records."""
    from pyspark.sql import functions as F

    cols = ("topic", "partition", "offset")
    return (
        trades.select(*cols).unionByName(books.select(*cols)).groupBy("topic", "partition")
        .agg(F.max("offset").alias("last_offset"))
    )  # fmt: skip


def rejects(trades, books, settings: Settings):
    """The records of both topics the metrics cannot use, with the reason: they go to dead_letters."""
    from pyspark.sql import functions as F

    bad_trades = trades.where(
        F.col("e").isNull() | ~F.col("e").isin(TRADE, AGG_TRADE) | ((F.col("e") == TRADE) & ~F.col("ok"))
    ).select(
        *KAFKA_COLUMNS,
        F.when(F.col("e").isNull(), "not a JSON event (no event type, or a field of the wrong type)")
        .when(~F.col("e").isin(TRADE, AGG_TRADE), F.concat(F.lit("unknown event type "), F.col("e")))
        .otherwise(
            f"a trade outside the contract: symbol not [A-Z0-9]{{2,{limits.SYMBOL_MAX_LENGTH}}}, a negative id, "
            f"event or ingestion time outside {limits.FIRST_EVENT_MS}..ingestion/Kafka time + {settings.max_clock_skew_seconds} s, "
            f"or a price/quantity that is not a positive decimal of {PRICE_TYPE}/{QUANTITY_TYPE}"
        )
        .alias("reason"),
    )
    bad_books = books.where(~F.col("ok")).select(
        *KAFKA_COLUMNS,
        F.lit(
            f"a bookTicker outside the contract: symbol, update id, ingestion time (at most its Kafka time + "
            f"{settings.max_clock_skew_seconds} s), or a bid/ask that is not a positive {PRICE_TYPE}"
        ).alias("reason"),
    )
    return bad_trades.unionByName(bad_books)
