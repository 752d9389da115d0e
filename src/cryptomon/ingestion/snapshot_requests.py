"""The ingestion's side of the book stage's snapshot requests (see kafka/depth_requests.py): read from
the end of binance.depth_requests, each valid request for a symbol this instance follows asks the
snapshot fetcher for a new snapshot of it, at most one per symbol per cooldown (one that comes within it
is deferred to its end); anything else is counted (and a record that is not a request dead-lettered)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from cryptomon.errors import BadData
from cryptomon.ingestion.depth import SnapshotFetcher
from cryptomon.kafka.clients import consumer_config
from cryptomon.kafka.depth_requests import REQUEST_COOLDOWN_SECONDS, parse_request

log = logging.getLogger(__name__)

ASKED, DEFERRED, NOT_FOLLOWED, WAITING, BAD = "asked", "deferred", "not_followed", "waiting", "bad"
POLL_SECONDS = 0.5


class SnapshotRequests:
    def __init__(
        self,
        fetcher: SnapshotFetcher,
        dead_letter: Callable[[bytes, str, str, int], None],
        cooldown: float = REQUEST_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fetcher, self.dead_letter, self.cooldown, self.clock = fetcher, dead_letter, cooldown, clock
        self.last_asked: dict[str, float] = {}
        self.deferred: dict[str, float] = {}  # symbol -> when its cooldown ends: asked for then
        self.outcomes: Counter[str] = Counter()

    def handle(self, raw: bytes | None) -> str:
        """One record of the topic: what came of it."""
        try:
            symbol, reason = parse_request(raw)
        except BadData as bad:
            self.dead_letter(raw or b"", bad.reason, bad.detail, time.time_ns() // 1_000_000)
            return self._count(BAD)
        if symbol not in self.fetcher.feed.last:
            return self._count(NOT_FOLLOWED)  # another instance's, or none's
        now = self.clock()
        ends = self.last_asked.get(symbol, -self.cooldown) + self.cooldown
        if now < ends:  # asked for lately: once more when the cooldown ends (however many came meanwhile)
            self.deferred[symbol] = ends
            return self._count(DEFERRED)
        return self._ask(symbol, now, reason)

    def tick(self) -> None:
        """Ask for the deferred requests whose cooldown has ended."""
        now = self.clock()
        for symbol in [s for s, ends in self.deferred.items() if ends <= now]:
            del self.deferred[symbol]
            self._ask(symbol, now, "deferred")

    def _ask(self, symbol: str, now: float, reason: str) -> str:
        self.last_asked[symbol] = now
        if not self.fetcher.request(symbol):
            return self._count(WAITING)  # a snapshot is on its way already
        log.info("%s: a new depth snapshot asked by a book stage (%s)", symbol, reason)
        return self._count(ASKED)

    def _count(self, outcome: str) -> str:
        self.outcomes[outcome] += 1
        return outcome

    async def run(self, bootstrap: str, topic: str, security: dict[str, Any]) -> None:
        consumer = await asyncio.to_thread(_consumer_at_end, bootstrap, topic, security)
        try:
            while True:
                for msg in consumer.consume(100, 0):
                    if msg.error() is None:
                        self.handle(msg.value())
                self.tick()
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await asyncio.to_thread(consumer.close)

    def health(self) -> dict:
        return dict(self.outcomes)


def _consumer_at_end(bootstrap: str, topic: str, security: dict[str, Any]) -> Consumer:
    """A consumer of every partition of `topic` from its end (requests are live: none from before)."""
    consumer = Consumer(consumer_config(bootstrap, extra={**security, "client.id": "cryptomon-ingest-requests"}))
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    if meta.error is not None:
        consumer.close()
        raise KafkaException(meta.error)
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in meta.partitions])
    return consumer
