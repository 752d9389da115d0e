"""The worker benchmark's ceiling: PostgreSQL's own COPY of the same rows into the same tables.

Every message the worker drains is read from Kafka, parsed and rendered as COPY text beforehand (not
timed), in batches of the worker's flush size per partition, as the worker batches them. Then the same
number of connections as the worker's writers COPY the batches, one transaction per batch, as fast as
PostgreSQL takes them: no Kafka, no parsing, no conflict handling, no offsets. Whatever the worker does
beyond that is what it costs."""

from __future__ import annotations

import threading
import time

import psycopg

from cryptomon.kafka.clients import read_to_end
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.worker.copytext import COPY_SQL, copy_text
from cryptomon.worker.rows import PARSERS


def render(table: str, rows: list[tuple]) -> bytes:
    """Rows of cryptomon.worker.rows as COPY text, as the worker renders them (not timed here)."""
    text = copy_text(table, rows)
    assert text is not None, "the benchmark's rows are plain symbols and decimals"
    return text


def per_partition(bootstrap: str, batch_rows: int) -> dict[tuple[str, int], list[tuple[str, bytes, int]]]:
    """(table, COPY text, rows) of every message on the two topics, batch_rows per batch, in each
    partition's order: batch i of a partition holds its messages i * batch_rows onwards."""
    out: dict[tuple[str, int], list[tuple[str, bytes, int]]] = {}
    for table in (TRADES, BOOK_TICKER):
        topic = topic_name(table)
        messages, _ = read_to_end(bootstrap, topic, "bench-copy-ceiling", timeout=120)
        rows_of: dict[int, list[tuple]] = {}
        for m in messages:
            rows_of.setdefault(m.partition(), []).append(PARSERS[table](m.value()))
        for partition, rows in rows_of.items():
            out[(topic, partition)] = [
                (table, render(table, rows[i : i + batch_rows]), len(rows[i : i + batch_rows]))
                for i in range(0, len(rows), batch_rows)
            ]
    return out


def batches(bootstrap: str, batch_rows: int) -> list[tuple[str, bytes, int]]:
    """(table, COPY text, rows) of every message on the two topics, batch_rows per partition's batch."""
    out = [b for chunks in per_partition(bootstrap, batch_rows).values() for b in chunks]
    # interleave the tables as the worker's partitions do
    return sorted(out, key=lambda b: hash(b[1]))


def copy_all(dsn: str, work: list[tuple[str, bytes, int]], connections: int) -> dict:
    """COPY every batch with `connections` connections; rows/s from the first COPY to the last commit."""
    lock, queue = threading.Lock(), list(reversed(work))
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(connections)]

    def run(conn: psycopg.Connection) -> None:
        while True:
            with lock:
                if not queue:
                    return
                table, data, _ = queue.pop()
            with conn.cursor() as cur, cur.copy(COPY_SQL[table]) as copy:
                copy.write(data)

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    cpu0, t0 = time.process_time(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1, cpu1 = time.monotonic(), time.process_time()
    for c in conns:
        c.close()
    rows = sum(n for *_, n in work)
    return {
        "rows": rows,
        "seconds": round(t1 - t0, 3),
        "rows_per_second": round(rows / (t1 - t0)),
        "cpu_s_per_100k_rows": round((cpu1 - cpu0) / rows * 1e5, 3),
        "connections": connections,
        "batch_rows": max(n for *_, n in work),
    }
