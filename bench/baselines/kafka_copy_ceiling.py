"""The worker benchmark's second ceiling: Kafka in, COPY out, nothing in between.

What any worker must do on this machine, and nothing more: consume every message from the broker (which
shares the cores), COPY the same rows into the same tables and commit the offsets after them. The rows'
COPY text is rendered beforehand from the same messages (not timed: bench/baselines/copy_ceiling.py), so
nothing is parsed, checked or rendered while it runs. Batches wait in one queue, two per writer, for
whichever writer is free, so that neither the consumer nor a writer waits for the other while there is
work, and fetches are as large as the broker serves; a partition's offsets are committed every 0.2 s up
to its first batch not yet written, as the worker does. It runs until killed (bench/worker.py's drain()
times it by its committed offsets).

Usage: kafka_copy_ceiling.py BOOTSTRAP DSN GROUP BATCH_ROWS WRITERS"""

from __future__ import annotations

import queue
import sys
import threading
import time

import psycopg
from confluent_kafka import Consumer, TopicPartition
from copy_ceiling import per_partition

from cryptomon.kafka.clients import STAGE_CONSUMER, consumer_config
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.worker.copytext import COPY_SQL
from cryptomon.worker.service import COMMIT_INTERVAL_S  # committed as often as the worker does

QUEUE_DEPTH = 2  # batches waiting per writer
# fetches as large as the broker will serve, so that the consumer is not what limits the ceiling: with the
# worker's settings (librdkafka's defaults, 1 MiB per partition a fetch) it reached 159-164k rows/s here,
# with these 239k (2026-12-07)
BIG_FETCHES = {
    "max.partition.fetch.bytes": 8 << 20,
    "fetch.max.bytes": 64 << 20,
    "queued.max.messages.kbytes": 256 << 10,
}


def main(bootstrap: str, dsn: str, group: str, batch_rows: int, writers: int) -> None:
    ready = per_partition(bootstrap, batch_rows)  # not timed: before the first commit
    nxt = dict.fromkeys(ready, 0)  # the partition's next batch
    seen = dict.fromkeys(ready, 0)  # messages consumed since its last batch went
    written: dict[tuple[str, int], dict[int, int]] = {tp: {} for tp in ready}  # batch -> its next offset
    committed = dict.fromkeys(ready, 0)  # the partition's first batch not committed
    lock = threading.Lock()
    work: queue.Queue = queue.Queue(QUEUE_DEPTH * writers)

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                tp, i, table, text, end = work.get()
                with conn.cursor() as cur, cur.copy(COPY_SQL[table]) as copy:
                    copy.write(text)
                with lock:
                    written[tp][i] = end

    for _ in range(writers):
        threading.Thread(target=write, daemon=True).start()
    consumer = Consumer(
        consumer_config(bootstrap, group, extra={"enable.auto.offset.store": False, **STAGE_CONSUMER, **BIG_FETCHES})
    )
    consumer.subscribe([topic_name(TRADES), topic_name(BOOK_TICKER)])
    last_commit = 0.0
    while True:
        for m in consumer.consume(batch_rows, 0.1):
            if m.error() is not None:
                continue
            tp = (m.topic(), m.partition())
            seen[tp] += 1
            table, text, n = ready[tp][nxt[tp]]
            if seen[tp] == n:  # the batch's messages are all in: the same rows, ready-made
                work.put((tp, nxt[tp], table, text, m.offset() + 1))
                nxt[tp] += 1
                seen[tp] = 0
        if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
            last_commit = time.monotonic()
            offsets = []
            with lock:
                for tp, ends in written.items():
                    end = None
                    while committed[tp] in ends:
                        end = ends.pop(committed[tp])
                        committed[tp] += 1
                    if end is not None:
                        offsets.append(TopicPartition(*tp, end))
            if offsets:
                consumer.commit(offsets=offsets, asynchronous=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
