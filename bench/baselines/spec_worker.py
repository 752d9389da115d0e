"""Baseline for the worker benchmark: the spec's literal design. confluent-kafka consumer, stdlib json,
psycopg2 `execute_values` with 500 rows per batch, INSERT ... ON CONFLICT DO NOTHING, commit, then a
synchronous offset commit. Usage: spec_worker.py BOOTSTRAP DSN GROUP N"""

import json
import sys

import psycopg2
from confluent_kafka import Consumer
from psycopg2.extras import execute_values

from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES

TRADES_SQL = (
    "INSERT INTO trades (event_time, symbol, event_type, trade_id, price, quantity, is_buyer_maker, ingestion_ts)"
    " VALUES %s ON CONFLICT DO NOTHING"
)
BOOK_SQL = (
    "INSERT INTO book_ticker (ingestion_ts, symbol, update_id, best_bid_price, best_bid_qty, best_ask_price,"
    " best_ask_qty) VALUES %s ON CONFLICT DO NOTHING"
)
TS = "to_timestamp(%s / 1000.0)"


def main(bootstrap: str, dsn: str, group: str, n: int) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic_name(TRADES), topic_name(BOOK_TICKER)])
    conn = psycopg2.connect(dsn)
    trades, books, seen = [], [], 0

    def flush(rows, sql, template):
        if rows:
            with conn.cursor() as cur:
                execute_values(cur, sql, rows, template=template, page_size=500)
            conn.commit()
            consumer.commit(asynchronous=False)
            rows.clear()

    while seen < n:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        d = json.loads(msg.value())
        seen += 1
        if msg.topic() == topic_name(TRADES):
            trades.append(
                (d["T"], d["s"], d["e"], d.get("t", d.get("a")), d["p"], d["q"], d["m"], d["ingestion_timestamp"])
            )
            if len(trades) >= 500:
                flush(trades, TRADES_SQL, f"({TS}, %s, %s, %s, %s, %s, %s, {TS})")
        else:
            books.append((d["ingestion_timestamp"], d["s"], d["u"], d["b"], d["B"], d["a"], d["A"]))
            if len(books) >= 500:
                flush(books, BOOK_SQL, f"({TS}, %s, %s, %s, %s, %s, %s)")
    flush(trades, TRADES_SQL, f"({TS}, %s, %s, %s, %s, %s, %s, {TS})")
    flush(books, BOOK_SQL, f"({TS}, %s, %s, %s, %s, %s, %s)")
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
