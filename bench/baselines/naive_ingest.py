"""Baseline for the ingestion benchmark: the obvious implementation (stdlib json, one produce and one
flush per message, acks=all). Usage: naive_ingest.py WS_URL BOOTSTRAP N"""

import asyncio
import json
import sys
import time

import websockets
from confluent_kafka import Producer

from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES


async def main(url: str, bootstrap: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "compression.type": "lz4"})
    count = 0
    async with websockets.connect(url, max_size=None) as ws:
        async for raw in ws:
            msg = json.loads(raw)
            data = msg["data"]
            data["ingestion_timestamp"] = int(time.time() * 1000)
            topic = topic_name(BOOK_TICKER) if msg["stream"].endswith("@bookTicker") else topic_name(TRADES)
            producer.produce(topic, json.dumps(data).encode(), data["s"].encode())
            producer.flush()
            count += 1
            if count >= n:
                break


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
