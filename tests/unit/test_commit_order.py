"""The worker's commit order without Kafka or a database: futures are completed by hand, in any order."""

from __future__ import annotations

from concurrent.futures import Future

import orjson
from confluent_kafka import Message

from cryptomon.kafka.topics import topic_name
from cryptomon.names import TRADES
from cryptomon.worker.batch import Batch
from cryptomon.worker.ordering import CommitOrder

TOPIC = topic_name(TRADES)
P0, P1 = (TOPIC, 0), (TOPIC, 1)


def trade(i: int) -> bytes:
    return orjson.dumps({"e": "trade", "E": 1, "s": "BTCUSDT", "t": i, "p": "1.0", "q": "2.0", "T": 1700000000000, "m": True,
                         "ingestion_timestamp": 1700000000005})  # fmt: skip


def batch(partition: int, *offsets: int) -> Batch:
    b = Batch(TRADES)
    for o in offsets:
        b.append(Message(topic=TOPIC, partition=partition, offset=o, key=b"BTCUSDT", value=trade(o)), 0.0)
    return b


def done(value=(1, [], 0.0)) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def test_offsets_are_staged_only_when_every_earlier_batch_of_the_partition_is_written():
    order: CommitOrder[str] = CommitOrder()
    first, second = Future(), Future()
    order.push(P0, batch(0, 10, 11), first, "w1")
    order.push(P0, batch(0, 12, 13), second, "w2")
    second.set_result((2, [], 0.01))  # the later batch finished first
    landed, failed = order.reap()
    assert landed == [] and failed == [] and order.take_offsets() == {}
    assert order.busy() == [first]
    first.set_result((2, [], 0.02))
    landed, failed = order.reap()
    assert [x.writer for x in landed] == ["w1", "w2"] and not failed
    assert [x.result for x in landed] == [(2, [], 0.02), (2, [], 0.01)]
    assert order.take_offsets() == {P0: 14}
    assert order.take_offsets() == {}  # taken once
    assert not order


def test_partitions_do_not_wait_for_each_other():
    order: CommitOrder[str] = CommitOrder()
    slow = Future()
    order.push(P0, batch(0, 1), slow, "w1")
    order.push(P1, batch(1, 7, 8), done(), "w2")
    landed, _ = order.reap()
    assert [x.writer for x in landed] == ["w2"]
    assert order.take_offsets() == {P1: 9}
    assert order.messages() == 1 and bool(order)


def test_a_failed_batch_takes_its_partitions_later_batches_back_in_order():
    order: CommitOrder[str] = CommitOrder()
    failing, later_written = Future(), done()
    order.push(P0, batch(0, 10, 11), failing, "w1")
    order.push(P0, batch(0, 12), later_written, "w2")
    order.push(P1, batch(1, 3), done(), "w3")
    error = ConnectionError("database went away")
    failing.set_exception(error)
    landed, failed = order.reap()
    assert [x.writer for x in landed] == ["w3"]
    assert len(failed) == 1
    f = failed[0]
    assert f.partition == P0 and f.error is error and f.writers == ["w1", "w2"]
    assert [pos[2] for pos in f.batch.positions] == [10, 11, 12]  # Kafka's order, for the retry
    # nothing of the failed partition is committed, not even the later batch that was written
    assert order.take_offsets() == {P1: 4}
    assert not order


def test_wait_all_returns_when_every_write_has_finished():
    order: CommitOrder[str] = CommitOrder()
    f = done()
    order.push(P0, batch(0, 1), f, "w")
    order.wait_all()
    assert order.busy() == []
