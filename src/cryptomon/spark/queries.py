"""The job's DataFrames: both topics read once per trigger; in one pass over each micro-batch, its Kafka
records decoded into typed columns and grouped into the batch's exact sums per trade and spread window,
with where each partition ends and how many records the metrics cannot use (poison, read again only when
there is any). The driver merges the sums into the metric tables (merge.py, writer.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import NamedTuple

from cryptomon.binance import limits
from cryptomon.binance.schema import AGG_TRADE, SYMBOL, TRADE
from cryptomon.db import horizons
from cryptomon.db.horizons import BEFORE_HORIZON
from cryptomon.kafka.security import spark_kafka_options
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.settings import Settings
from cryptomon.spark import merge

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
# Casts are try_cast (NULL instead of an error under ANSI mode: the record goes to the dead letters, see
# batch_frame) and sums try_sum (NULL on overflow: the driver then sums that window's trades itself in Python's
# Decimal, see merge.py).
PRICE_TYPE, QUANTITY_TYPE = "decimal(16,8)", "decimal(20,8)"
# a trade id (< 2^63 < 1e19) as a decimal: its square (< 8.6e37) is a DECIMAL(38,0), exact; their sum try_sum
ID_TYPE = "decimal(19,0)"
KAFKA_COLUMNS = ("topic", "partition", "offset", "key", "value")  # a dead letter's coordinates and bytes

TRADE_WINDOW_MS, SPREAD_WINDOW_MS = 60_000, 30_000


class Cuts(NamedTuple):
    """Epoch ms before which trades (event time) and bookTickers (ingestion time) are set aside (None: none)."""

    trade: int | None
    book: int | None


NO_CUTS = Cuts(None, None)


def cuts(by_table: dict[str, int]) -> Cuts:
    """The cuts from the archive horizons (db.horizons.read): trades against `trades` and
    `trade_metrics`, bookTickers against `book_ticker` and `spread_metrics`."""
    return Cuts(
        horizons.cut(by_table, TRADES, "trade_metrics", TRADE_WINDOW_MS),
        horizons.cut(by_table, BOOK_TICKER, "spread_metrics", SPREAD_WINDOW_MS),
    )


def _schemas():
    from pyspark.sql.types import BooleanType, LongType, StringType, StructField, StructType

    def struct(fields):
        return StructType([StructField(name, kind()) for name, kind in fields])

    trade = struct([("e", StringType), ("s", StringType), ("t", LongType), ("p", StringType), ("q", StringType),
                    ("T", LongType), ("m", BooleanType), ("ingestion_timestamp", LongType)])  # fmt: skip
    book = struct([("u", LongType), ("s", StringType), ("b", StringType), ("a", StringType),
                   ("ingestion_timestamp", LongType)])  # fmt: skip
    return trade, book


def batch_frame(df, settings: Settings, cuts: Cuts = NO_CUTS):
    """A micro-batch's Kafka records of both topics -> one row each, parsed once (by its topic's schema):
    the Kafka coordinates and bytes, typed columns, `is_trade` (a trade the metrics use), `is_book` (a
    bookTicker they use), and `bad` with its `reason` (poison: anything else but an aggTrade, which is fine
    and not used). The contract is the ingestion's and the worker's (cryptomon.binance.schema): a record
    outside it never reaches a window, and its times are not converted at all (a year-10000 time would fail
    the query). The ingestion time is bounded by the record's Kafka timestamp (the broker's append time),
    not the batch's clock, so that a replayed batch decides the same. `cuts`: the times before which a trade
    (its event time) or a bookTicker (its ingestion time) is set aside, its raw row or its metric window
    archived or about to be (db.horizons.cut)."""
    from pyspark.sql import functions as F

    skew = settings.max_clock_skew_ms
    trade_schema, book_schema = _schemas()
    is_trades = F.col("topic") == topic_name(TRADES)
    text = F.col("value").cast("string")
    # parsed in a projection of its own, so that each record's JSON is read once however often it is used
    parsed = df.select(*KAFKA_COLUMNS, "timestamp", F.when(is_trades, F.from_json(text, trade_schema)).alias("tr"),
                       F.when(~is_trades, F.from_json(text, book_schema)).alias("bk"))  # fmt: skip
    tr, bk = F.col("tr"), F.col("bk")
    p, q = tr["p"].try_cast(PRICE_TYPE), tr["q"].try_cast(QUANTITY_TYPE)
    trade_ok = F.coalesce(
        _record_ok(tr, "t", ("p", "q"), skew) & _time_ok(tr["T"], tr["ingestion_timestamp"] + skew) & (p > 0) & (q > 0),
        F.lit(False),
    )
    bid, ask = bk["b"].try_cast(PRICE_TYPE), bk["a"].try_cast(PRICE_TYPE)
    book_ok = F.coalesce(_record_ok(bk, "u", ("b", "a"), skew) & (bid > 0) & (ask > 0), F.lit(False))
    e = tr["e"]
    trade_old, book_old = _before(tr["T"], cuts.trade), _before(bk["ingestion_timestamp"], cuts.book)
    is_trade = is_trades & F.coalesce(e == TRADE, F.lit(False)) & trade_ok & ~trade_old
    is_book = ~is_trades & book_ok & ~book_old
    bad = F.when(
        is_trades, e.isNull() | ~e.isin(TRADE, AGG_TRADE) | ((e == TRADE) & (~trade_ok | trade_old))
    ).otherwise(~book_ok | book_old)
    reason = (
        F.when(is_trades & trade_ok & trade_old, F.lit(f"{BEFORE_HORIZON}: a trade before {_iso(cuts.trade)}, "
                                                       "its raw row or its window archived or about to be"))
        .when(~is_trades & book_ok & book_old, F.lit(f"{BEFORE_HORIZON}: a bookTicker before {_iso(cuts.book)}, "
                                                     "its raw row or its window archived or about to be"))
        .when(~is_trades, F.lit(
            f"a bookTicker outside the contract: symbol, update id, ingestion time (at most its Kafka time + "
            f"{settings.max_clock_skew_seconds} s), or a bid/ask that is not a positive {PRICE_TYPE}"))
        .when(e.isNull(), "not a JSON event (no event type, or a field of the wrong type)")
        .when(~e.isin(TRADE, AGG_TRADE), F.concat(F.lit("unknown event type "), e))
        .otherwise(
            f"a trade outside the contract: symbol not [A-Z0-9]{{2,{limits.SYMBOL_MAX_LENGTH}}}, a negative id, "
            f"event or ingestion time outside {limits.FIRST_EVENT_MS}..ingestion/Kafka time + {settings.max_clock_skew_seconds} s, "
            f"or a price/quantity that is not a positive decimal of {PRICE_TYPE}/{QUANTITY_TYPE}"
        )
    )  # fmt: skip
    return parsed.select(
        *KAFKA_COLUMNS,
        F.when(is_trades, tr["s"]).otherwise(bk["s"]).alias("symbol"),
        F.when(is_trade, tr["t"]).alias("trade_id"),
        F.when(is_trade, F.timestamp_millis(tr["T"])).alias("event_time"),
        F.when(is_trade, p).alias("p"),
        F.when(is_trade, q).alias("q"),
        F.when(is_book, F.timestamp_millis(bk["ingestion_timestamp"])).alias("ingestion_ts"),
        F.when(is_book, ask - bid).alias("spread"),
        is_trade.alias("is_trade"),
        is_book.alias("is_book"),
        bad.alias("bad"),
        reason.alias("reason"),
    )


def _before(ms, cut: int | None):
    """Whether an epoch-ms time is before the cut (never NULL; always False without a cut)."""
    from pyspark.sql import functions as F

    return F.lit(False) if cut is None else F.coalesce(ms < cut, F.lit(False))


def _iso(ms: int | None) -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


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


def source(spark, settings: Settings, max_offsets: int | None = None):
    """Both topics, read once per trigger by the job's one query."""
    return _kafka_source(spark, settings, f"{topic_name(TRADES)},{topic_name(BOOK_TICKER)}", max_offsets)


def unseen(offsets: dict[tuple[str, int], int]):
    """The records at or after each partition's next offset to count (metric_offsets): a batch replayed
    after a crash, or a job started afresh from the earliest offsets, counts nothing twice. True without
    offsets (nothing counted yet). Applied only to a batch that holds records counted before (batch_groups:
    its offsets compile the batch's code again)."""
    from pyspark.sql import functions as F

    cond = F.lit(True)
    for (topic, partition), next_offset in sorted(offsets.items()):
        cond = F.when((F.col("topic") == topic) & (F.col("partition") == partition),
                      F.col("offset") >= next_offset).otherwise(cond)  # fmt: skip
    return cond


def _window_start(ts, ms: int):
    """The start of the tumbling window of `ms` that holds `ts` (as Spark's window() for times after 1970)."""
    from pyspark.sql import functions as F

    return F.timestamp_millis(F.floor(F.unix_millis(ts) / ms) * ms)


def batch_sums(frame):
    """One pass over a micro-batch's records, grouped by (topic, partition, kind, symbol, window): per trade
    window ('trade') its count, distinct ids, exact sums and lowest and highest id (what decides whether the
    job has counted any of them: trade_ids.py); per spread window ('book') count, sum, max, min; for every
    group the first and last offsets of its records and the records the metrics cannot use (kind NULL: those, and
    aggTrades). The driver adds the groups up (merge.py). With the sums of the ids and of their squares, a
    window whose ids have one hole needs no second pass to know its runs (merge.one_hole)."""
    from pyspark.sql import functions as F

    trade, book = F.col("is_trade"), F.col("is_book")
    kind = F.when(trade, "trade").when(book, "book")
    window = F.when(trade, _window_start(F.col("event_time"), TRADE_WINDOW_MS)).when(
        book, _window_start(F.col("ingestion_ts"), SPREAD_WINDOW_MS)
    )
    return frame.groupBy(
        "topic", "partition", kind.alias("kind"), F.when(trade | book, F.col("symbol")).alias("symbol"),
        window.alias("window_start"),
    ).agg(
        F.count(F.lit(1)).alias("n"),
        F.count_distinct("trade_id").alias("n_ids"),
        F.try_sum(F.col("p") * F.col("q")).alias("sum_pq"),
        F.try_sum("q").alias("sum_q"),
        F.try_sum("p").alias("sum_p"),
        F.try_sum(F.col("p") * F.col("p")).alias("sum_pp"),
        F.min("trade_id").alias("first_id"),
        F.max("trade_id").alias("last_id"),
        # power sums of the ids: with count and bounds they prove a window's missing ids one run (merge.one_hole)
        F.try_sum("trade_id").alias("sum_id"),
        F.try_sum(F.col("trade_id").cast(ID_TYPE) * F.col("trade_id").cast(ID_TYPE)).alias("sum_id2"),
        F.sum("spread").alias("sum_spread"),
        F.max("spread").alias("max_spread"),
        F.min("spread").alias("min_spread"),
        F.min("offset").alias("first_offset"),
        F.max("offset").alias("last_offset"),
        F.sum(F.col("bad").cast("int")).alias("bad"),
    )  # fmt: skip


def batch_groups(batch_df, settings: Settings, start: dict[tuple[str, int], int], cuts: Cuts = NO_CUTS):
    """A micro-batch's groups (batch_sums) of the records not counted before and not older than the archive
    horizons' cuts, and its frame (batch_frame).

    A batch normally starts where the last one ended (metric_offsets) and holds nothing older than the cuts,
    so it is summed as it is: its plan is the same in every batch and Spark reuses the code it generated for
    it. Offsets and cuts are literals that Spark's generated code holds as constants: filtering by the
    offsets, which change every batch, compiled two new classes a batch (~100 ms of Janino each, then code the
    JIT saw for the first time), and so did each new cut (once a chunk interval, when the retention publishes
    a horizon; tests/integration/test_spark_codegen.py counts the compilations). Only when a
    partition's first record was counted before (a batch replayed after a crash, or a job started afresh from
    older offsets), or some window starts before its cut (merge.before_cuts), is the batch summed again, the
    counted records left out and the old ones set aside."""
    frame = batch_frame(batch_df, settings)
    groups = batch_sums(frame).collect()
    recount = merge.counted_before(groups, start)
    if recount or merge.before_cuts(groups, cuts):
        frame = batch_frame(batch_df.where(unseen(start)) if recount else batch_df, settings, cuts)
        groups = batch_sums(frame).collect()
    return groups, frame


def trade_runs(frame, symbols: list[str]):
    """The runs of consecutive ids in the batch's trade windows of `symbols`, (symbol, window_start,
    first_id, last_id): the ids a window with gaps counts, without its trades leaving Spark. Gaps and
    islands: along a run of consecutive ids an id minus its dense rank in the window is one number."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    trades = frame.where(F.col("is_trade") & F.col("symbol").isin(symbols)).select(
        "symbol", _window_start(F.col("event_time"), TRADE_WINDOW_MS).alias("window_start"), "trade_id"
    )
    rank = F.dense_rank().over(Window.partitionBy("symbol", "window_start").orderBy("trade_id"))
    return (
        trades.withColumn("run", F.col("trade_id") - rank)
        .groupBy("symbol", "window_start", "run")
        .agg(F.min("trade_id").alias("first_id"), F.max("trade_id").alias("last_id"))
        .drop("run")
    )


def trade_rows(frame, symbols: list[str]):
    """The batch's trades of `symbols`, one per (id, event time), the raw table's key: the windows whose
    sums the driver computes itself (some of their ids were counted before, their ids have holes or
    repeats, or Spark's sums overflowed). The same id at another time is another window's trade."""
    from pyspark.sql import functions as F

    return (
        frame.where(F.col("is_trade") & F.col("symbol").isin(symbols))
        .select("symbol", "trade_id", "event_time", "p", "q")
        .dropDuplicates(["symbol", "trade_id", "event_time"])
    )


def rejects(frame):
    """The records of either topic the metrics cannot use, with the reason: they go to dead_letters."""
    from pyspark.sql import functions as F

    return frame.where(F.col("bad")).select(*KAFKA_COLUMNS, "reason")
