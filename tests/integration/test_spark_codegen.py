"""The job's micro-batch plan in a Spark session of the test's own (no Kafka: the batches are DataFrames of
Kafka's columns): a batch that starts where the last one ended is summed by the code Spark generated for the
first, not compiled again (nor for new archive horizons), and a replayed batch counts only the records
not counted before; the session keeps only as many past jobs as it is told to."""

from __future__ import annotations

import time

import orjson
import pytest

from cryptomon.db.horizons import BEFORE_HORIZON
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.settings import Settings
from cryptomon.spark import queries, warmup
from cryptomon.spark.streaming_job import build_session
from tests.helpers import wait_for

pytestmark = pytest.mark.integration
TRADES_TOPIC, BOOK_TOPIC = topic_name(TRADES), topic_name(BOOK_TICKER)
MINUTE = 60_000


@pytest.fixture(scope="module")
def spark():
    settings = Settings(spark_master="local[1]", spark_ui_port=0, spark_shuffle_partitions=1, spark_status_retained=5)
    session = build_session(settings, "cryptomon-test-codegen")
    yield session, settings
    session.stop()


def batch(session, first: int, n: int, t0: int):
    """n trades and n bookTickers of one symbol at offsets first.. of partition 0 of each topic, a trade and
    a bookTicker every 100 ms from t0 + first * 100 ms, as the ingestion writes them."""
    rows = []
    for offset in range(first, first + n):
        at = t0 + offset * 100
        trade = {"e": "trade", "E": at, "s": "CGUSDT", "t": offset + 1, "p": "100.5", "q": "0.25", "T": at,
                 "m": offset % 2 == 0, "ingestion_timestamp": at + 5}  # fmt: skip
        book = {"u": offset + 1, "s": "CGUSDT", "b": "100.1", "B": "1", "a": "100.3", "A": "2",
                "ingestion_timestamp": at}  # fmt: skip
        rows.append((TRADES_TOPIC, 0, offset, b"CGUSDT", orjson.dumps(trade), at + 10))
        rows.append((BOOK_TOPIC, 0, offset, b"CGUSDT", orjson.dumps(book), at + 10))
    df = session.createDataFrame(rows, "topic string, partition int, offset long, key binary, value binary, ms long")
    return df.selectExpr("topic", "partition", "offset", "key", "value", "timestamp_millis(ms) AS timestamp")


def compilations(session) -> int:
    """Classes Spark's code generator has compiled in this JVM so far."""
    return session.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount()


def trades_per_minute(groups) -> dict[int, int]:
    return {int(g.window_start.timestamp()) * 1000: g.n for g in groups if g.kind == "trade"}


def test_the_next_batch_reuses_the_generated_code_and_a_replay_counts_only_what_is_new(spark):
    session, settings = spark
    t0 = (int(time.time() * 1000) // MINUTE - 10) * MINUTE
    first, second = batch(session, 0, 900, t0), batch(session, 900, 900, t0)  # 90 s each: 1.5 minutes
    groups, _ = queries.batch_groups(first, settings, {})
    assert trades_per_minute(groups) == {t0: 600, t0 + MINUTE: 300}

    ended = {(TRADES_TOPIC, 0): 900, (BOOK_TOPIC, 0): 900}  # where the first batch ended
    before = compilations(session)
    groups, _ = queries.batch_groups(second, settings, ended)
    assert compilations(session) == before  # the same plan: no code compiled for the second batch
    assert trades_per_minute(groups) == {t0 + MINUTE: 300, t0 + 2 * MINUTE: 600}
    assert sum(g.n for g in groups if g.kind == "book") == 900

    # the second batch replayed after its first 300 records were counted: only the other 600 count
    groups, _ = queries.batch_groups(second, settings, {(TRADES_TOPIC, 0): 1200, (BOOK_TOPIC, 0): 1200})
    assert trades_per_minute(groups) == {t0 + 2 * MINUTE: 600}
    assert sum(g.n for g in groups if g.kind == "book") == 600
    assert min(g.first_offset for g in groups) == 1200


def test_new_archive_horizons_compile_nothing_until_a_batch_holds_a_record_older_than_them(spark):
    """The retention publishes a horizon every chunk interval: batches with nothing older than the cuts are
    summed by the same code whatever the cuts, and one that holds older records sets exactly those aside."""
    session, settings = spark
    t0 = (int(time.time() * 1000) // MINUTE - 10) * MINUTE
    second = batch(session, 900, 900, t0)  # trades and bookTickers from t0 + 90 s to t0 + 180 s
    ended = {(TRADES_TOPIC, 0): 900, (BOOK_TOPIC, 0): 900}
    queries.batch_groups(second, settings, ended, queries.Cuts(t0 - 20 * MINUTE, t0 - 20 * MINUTE))
    before = compilations(session)
    for back in (19, 18, 5, 1):  # each horizon later than the last, all before the batch's records
        groups, _ = queries.batch_groups(second, settings, ended, queries.Cuts(t0 - back * MINUTE, t0))
        assert trades_per_minute(groups) == {t0 + MINUTE: 300, t0 + 2 * MINUTE: 600}
    assert compilations(session) == before

    # trades before t0 + 2 min (offsets 900..1199) and bookTickers before t0 + 150 s (900..1499) set aside
    cut = queries.Cuts(t0 + 2 * MINUTE, t0 + 150_000)
    groups, frame = queries.batch_groups(second, settings, ended, cut)
    assert trades_per_minute(groups) == {t0 + 2 * MINUTE: 600}
    assert sum(g.n for g in groups if g.kind == "book") == 300
    aside = queries.rejects(frame).collect()
    assert sorted((r.topic, r.offset) for r in aside) == sorted(
        [(TRADES_TOPIC, o) for o in range(900, 1200)] + [(BOOK_TOPIC, o) for o in range(900, 1500)]
    )
    assert all(r.reason.startswith(BEFORE_HORIZON) for r in aside)


def test_the_warm_up_sums_good_records_of_both_kinds_and_writes_nothing(spark):
    """What the job sums before its query starts (spark/warmup.py) goes down the paths of the market's
    records, not the poison's: every record a trade (2 in 3, ids distinct) or a bookTicker (1 in 3)."""
    session, settings = spark
    groups = queries.batch_sums(queries.batch_frame(warmup.records(session, 3_000, int(time.time() * 1000)),
                                                    settings)).collect()  # fmt: skip
    assert sum(g.bad for g in groups) == 0
    trades = [g for g in groups if g.kind == "trade"]
    assert sum(g.n for g in trades) == sum(g.n_ids for g in trades) == 2_000
    assert sum(g.n for g in groups if g.kind == "book") == 1_000
    assert warmup.warm_up(session, settings.model_copy(update={"spark_warmup_records": 300})) > 0
    assert warmup.warm_up(session, settings.model_copy(update={"spark_warmup_records": 0})) == 0


def test_the_driver_forgets_jobs_beyond_those_it_is_told_to_keep(spark):
    """Spark keeps 1,000 past jobs, stages and SQL executions in the driver's heap (UI or not); the job's
    session keeps CRYPTOMON_SPARK_STATUS_RETAINED of each, so weeks of micro-batches do not pile up there."""
    session, settings = spark
    keep = settings.spark_status_retained
    for _ in range(4 * keep):
        assert session.range(10).selectExpr("sum(id) AS s").collect()[0].s == 45
    jobs = session.sparkContext.statusTracker().getJobIdsForGroup
    assert len(jobs()) > 0
    wait_for(lambda: len(jobs()) <= keep, 30, what=f"the driver down to {keep} jobs")  # trimmed asynchronously
    assert session.sparkContext.getConf().get("spark.ui.retainedStages") == str(keep)
    assert session.sparkContext.getConf().get("spark.sql.ui.retainedExecutions") == str(keep)
