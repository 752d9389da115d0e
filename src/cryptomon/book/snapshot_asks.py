"""When the book stage asks the ingestion for a snapshot (kafka/depth_requests.py): at once for a book its
bookTicker contradicted (it resyncs), and for a book waiting for one longer than `ASK_AFTER_SECONDS`
(the snapshot went by before this stage read the topic), again every `ASK_AGAIN_SECONDS` while it waits.
The decisions are pure (`due`); `SnapshotAsker` sends them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaException, Producer

from cryptomon.kafka.depth_requests import MISMATCH, WAITING, request_value

log = logging.getLogger(__name__)

ASK_AFTER_SECONDS = 10.0  # the ingestion fetches a snapshot on its own within seconds when it sees the need
ASK_AGAIN_SECONDS = 60.0


class AskPlan:
    """Per book waiting for a snapshot: since when (this stage's clock), and when it last asked."""

    def __init__(self, after: float = ASK_AFTER_SECONDS, again: float = ASK_AGAIN_SECONDS):
        self.after, self.again = after, again
        self.waiting_since: dict[str, float] = {}
        self.asked_at: dict[str, float] = {}

    def due(self, waiting: Iterable[str], mismatched: Iterable[str], now: float) -> list[tuple[str, str]]:
        """(symbol, reason) to ask for now: `waiting` are the books without a sync, `mismatched` those that
        resynced on a mismatch since the last call."""
        out = []
        for symbol in mismatched:
            out.append((symbol, MISMATCH))
            self.waiting_since[symbol] = self.asked_at[symbol] = now
        waiting = set(waiting)
        for symbol in [s for s in self.waiting_since if s not in waiting]:  # synced meanwhile
            del self.waiting_since[symbol]
            self.asked_at.pop(symbol, None)
        for symbol in sorted(waiting):
            since = self.waiting_since.setdefault(symbol, now)
            last = self.asked_at.get(symbol)
            if (last is None and now - since >= self.after) or (last is not None and now - last >= self.again):
                out.append((symbol, WAITING))
                self.asked_at[symbol] = now
        return out


class SnapshotAsker:
    """Sends the plan's requests into binance.depth_requests."""

    def __init__(self, bootstrap: str, topic: str, security: dict[str, Any]):
        self.topic = topic
        self.plan = AskPlan()
        self.sent = 0
        self.producer = Producer({"bootstrap.servers": bootstrap, **security, "acks": "all", "linger.ms": 50,
                                  "client.id": "cryptomon-book-asks"})  # fmt: skip

    def tick(self, waiting: Iterable[str], mismatched: Iterable[str]) -> None:
        for symbol, reason in self.plan.due(waiting, mismatched, time.monotonic()):
            log.info("%s: asking the ingestion for a depth snapshot (%s)", symbol, reason)
            try:
                self.producer.produce(self.topic, request_value(symbol, reason, time.time_ns() // 1_000_000),
                                      symbol.encode())  # fmt: skip
                self.sent += 1
            except (BufferError, KafkaException) as exc:  # asked again later while the book waits
                log.warning("cannot ask for a snapshot of %s: %s", symbol, exc)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(5.0)
