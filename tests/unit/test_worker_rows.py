"""The worker's pure part: Kafka values -> rows or dead letters, batches, when they flush, what they commit."""

import orjson
import pytest
from confluent_kafka import Message

from cryptomon.errors import BadData
from cryptomon.kafka.topics import topic_name
from cryptomon.names import TRADES
from cryptomon.worker.batch import Batch
from cryptomon.worker.rows import DeadLetter, book_row, trade_row

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


def message(partition: int, offset: int, value: bytes) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=value)


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
    book = {
        "u": 7,
        "s": "ETHUSDT",
        "b": "1.0",
        "B": "2.0",
        "a": "1.1",
        "A": "3.0",
        "ingestion_timestamp": 1700000000009,
    }
    assert book_row(orjson.dumps(book)) == (1700000000009, "ETHUSDT", 7, "1.0", "2.0", "1.1", "3.0")


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
    with pytest.raises(BadData):
        trade_row(value)


def test_batch_flush_triggers_and_offsets():
    b = Batch("trades")
    assert not b.due(0, 3, 2.0, drained=True)  # empty: never due
    b.append(message(0, 10, orjson.dumps(TRADE)), 100.0)
    b.append(message(1, 4, b"garbage"), 100.5)
    b.append(message(0, 11, orjson.dumps(dict(TRADE, t=6))), 101.0)
    assert len(b) == 3 and len(b.rows) == 2 and len(b.poison) == 1
    assert not b.due(101.0, 5, 2.0, drained=False)
    assert b.due(101.0, 3, 2.0, drained=False)  # size
    assert b.due(102.0, 5, 2.0, drained=False)  # age of the oldest message
    assert b.due(101.0, 5, 2.0, drained=True)  # topic drained
    assert b.commit_offsets() == {(TOPIC, 0): 12, (TOPIC, 1): 5}
    assert b.dead_letter_for(1, "boom") == DeadLetter(TOPIC, 0, 11, b"k", orjson.dumps(dict(TRADE, t=6)), "boom")
    assert b.poison[0].offset == 4 and b.poison[0].error.startswith("not_json: ")


def test_a_failed_batch_takes_the_newer_messages_back_behind_its_own():
    older, newer = Batch("trades"), Batch("trades")
    older.append(message(0, 10, orjson.dumps(TRADE)), 100.0)
    newer.append(message(0, 11, b"garbage"), 101.0)
    newer.append(message(0, 12, orjson.dumps(dict(TRADE, t=7))), 101.5)
    older.absorb(newer)
    assert [p[2] for p in older.positions] == [10, 12] and older.poison_positions == [(TOPIC, 0, 11)]
    assert [r.trade_id for r in older.rows] == [TRADE["t"], 7] and older.started == 100.0
    assert older.commit_offsets() == {(TOPIC, 0): 13}
    empty = Batch("trades")
    empty.absorb(newer)
    assert empty.started == 101.0 and len(empty) == 2
