import orjson
import pytest

from cryptomon.consumer.rows import Batch, Poison, book_row, trade_row
from cryptomon.feed.market import Conditions
from cryptomon.feed.scripted import Span, scripted_events
from cryptomon.kafka.topics import topic_name
from cryptomon.names import TRADES

TOPIC = topic_name(TRADES)
TRADE = {
    "e": "trade",
    "E": 1,
    "s": "BTCUSDT",
    "t": 5,
    "p": "1.50000000",
    "q": "2",
    "T": 1700000000000,
    "m": True,
    "M": True,
    "ingestion_timestamp": 1700000000005,
}


def test_trade_and_book_rows_keep_decimals_as_text_and_times_in_ms():
    assert trade_row(orjson.dumps(TRADE)) == (
        1700000000000,
        "BTCUSDT",
        "trade",
        5,
        "1.50000000",
        "2",
        True,
        1700000000005,
        False,
    )
    agg = dict(TRADE, e="aggTrade", a=9, f=1, l=2, backfilled=True)
    del agg["t"]
    assert trade_row(orjson.dumps(agg))[2:4] == ("aggTrade", 9) and trade_row(orjson.dumps(agg))[-1] is True
    book = {"u": 7, "s": "ETHUSDT", "b": "1.0", "B": "2.0", "a": "1.1", "A": "3.0", "ingestion_timestamp": 9}
    assert book_row(orjson.dumps(book)) == (9, "ETHUSDT", 7, "1.0", "2.0", "1.1", "3.0")


@pytest.mark.parametrize(
    "value",
    [
        b"nope",
        b"[]",
        orjson.dumps(dict(TRADE, e="kline")),
        orjson.dumps(dict(TRADE, ingestion_timestamp="x")),
        orjson.dumps(dict(TRADE, p=1.5)),
        None,
    ],
)
def test_poison_values(value):
    with pytest.raises(Poison):
        trade_row(value)


def test_batch_flush_triggers_and_offsets():
    b = Batch("trades")
    assert not b.due(0, 3, 2.0, drained=True)  # empty: never due
    b.add(TOPIC, 0, 10, b"k", orjson.dumps(TRADE), now=100.0)
    b.add(TOPIC, 1, 4, b"k", b"garbage", now=100.5)
    b.add(TOPIC, 0, 11, b"k", orjson.dumps(dict(TRADE, t=6)), now=101.0)
    assert len(b) == 3 and len(b.rows) == 2 and len(b.poison) == 1
    assert not b.due(101.0, 5, 2.0, drained=False)
    assert b.due(101.0, 3, 2.0, drained=False)  # size
    assert b.due(102.0, 5, 2.0, drained=False)  # age of the oldest message
    assert b.due(101.0, 5, 2.0, drained=True)  # topic drained
    assert b.commit_offsets() == {(TOPIC, 0): 12, (TOPIC, 1): 5}
    assert b.dead_letter_for(1, "boom") == (TOPIC, 0, 11, b"k", orjson.dumps(dict(TRADE, t=6)), "boom")


def test_a_failed_batch_takes_the_newer_messages_back_behind_its_own():
    older, newer = Batch("trades"), Batch("trades")
    older.add(TOPIC, 0, 10, b"k", orjson.dumps(TRADE), now=100.0)
    newer.add(TOPIC, 0, 11, b"k", b"garbage", now=101.0)
    newer.add(TOPIC, 0, 12, b"k", orjson.dumps(dict(TRADE, t=7)), now=101.5)
    older.absorb(newer)
    assert [p[2] for p in older.positions] == [10, 12] and older.poison_positions == [(TOPIC, 0, 11)]
    assert [r[3] for r in older.rows] == [TRADE["t"], 7] and older.started == 100.0
    assert older.commit_offsets() == {(TOPIC, 0): 13}
    empty = Batch("trades")
    empty.absorb(newer)
    assert empty.started == 101.0 and len(empty) == 2


def test_scripted_events_follow_the_spans():
    ev = scripted_events(("AUSDT",), 60_000, [Span(10), Span(10, Conditions(volume=10.0))], steps_per_second=2.0)
    trades = [p for k, p in ev if k == "trade"]
    assert trades[0]["T"] == 60_000 and all(60_000 <= p["T"] < 80_000 for p in trades)
    assert all(p["ingestion_timestamp"] == p["T"] + 5 for p in trades)
    calm = sum(float(p["q"]) for p in trades if p["T"] < 70_000)
    spiky = sum(float(p["q"]) for p in trades if p["T"] >= 70_000)
    assert spiky > 5 * calm
    assert [k for k, _ in ev].count("bookTicker") == 40  # one per step, 20 s at 2 steps/s


def test_repair_waits_for_sparks_watermark_or_its_silence():
    from datetime import UTC, datetime, timedelta

    from cryptomon.spark.repair import due

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    pending = {("A", t0): t0, ("B", t0 + timedelta(minutes=5)): t0}
    grace = timedelta(seconds=40)
    now = t0 + timedelta(minutes=10)
    # the watermark has passed A's window end (t0 + 1 min) but not B's (t0 + 6 min)
    assert due(pending, t0 + timedelta(minutes=2), now, now, grace) == [("A", t0)]
    assert due(pending, t0 + timedelta(minutes=6), now, now, grace) == sorted(pending)
    # no watermark and Spark silent for more than 5 minutes: by age, once the grace after the end is over
    silent = t0  # last report at t0, 6.5 minutes before
    assert due(pending, None, silent, t0 + timedelta(minutes=6, seconds=30), grace) == [("A", t0)]
    assert due(pending, None, None, now, grace) == sorted(pending)
    # Spark reported a minute ago with an old watermark: wait for it
    assert due(pending, t0, now - timedelta(minutes=1), now, grace) == []


def test_spark_starting_offsets_are_cut_to_the_topics_of_a_query():
    from cryptomon.spark.streaming_job import starting_offsets

    both = '{"a": {"0": 5, "1": -1}, "b": {"0": 7}}'
    assert starting_offsets("earliest", ["a"]) == "earliest"
    assert orjson.loads(starting_offsets(both, ["b"])) == {"b": {"0": 7}}
    assert orjson.loads(starting_offsets(both, ["a", "b"])) == orjson.loads(both)
