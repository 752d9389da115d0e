"""The ingestion benchmark's ceiling: the least a Binance client into Kafka can do per message.

One websockets connection to the combined stream of the same streams cryptomon follows (trade, aggTrade,
bookTicker per symbol), each frame received as bytes and produced as it came, unparsed, with cryptomon's
producer settings (`producer_config`: idempotent, acks=all, lz4, the same linger and batch), keyed by the
stream's symbol sliced from the frame's bytes. Nothing checked, no delivery report asked for, no ingestion
timestamp, no sequence or dedupe state, no health: what is left is the WebSocket library, librdkafka and
the event loop, which is what cryptomon's own per-message work is measured against.

Usage: bare_ingest.py WS_URL BOOTSTRAP TOPIC SYMBOL...
"""

from __future__ import annotations

import asyncio
import sys

from confluent_kafka import Producer
from websockets.asyncio.client import connect

from cryptomon.binance.streams import combined_stream_url, stream_names
from cryptomon.ingestion.producer import producer_config

PREFIX = len(b'{"stream":"')  # a combined-stream frame starts {"stream":"<symbol>@<kind>", ...


async def run(url: str, producer: Producer, topic: str) -> None:
    produce, poll = producer.produce, producer.poll
    async with connect(url, max_size=None, max_queue=4096) as ws:
        n = 0
        while True:
            raw = await ws.recv(decode=False)
            produce(topic, raw, raw[PREFIX : raw.index(b"@", PREFIX)])
            n += 1
            if n % 1000 == 0:
                poll(0)


def bare_config(bootstrap: str) -> dict:
    """cryptomon's producer settings, less the statistics its /health reads."""
    config = producer_config(bootstrap)
    del config["statistics.interval.ms"]
    config["client.id"] = "bench-bare-client"
    return config


def main() -> None:
    url, bootstrap, topic, symbols = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    producer = Producer(bare_config(bootstrap))
    try:
        asyncio.run(run(combined_stream_url(url, stream_names(symbols)), producer, topic))
    finally:
        producer.flush(30)


if __name__ == "__main__":
    main()
