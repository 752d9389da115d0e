"""When the book stage asks the ingestion for a snapshot (kafka/depth_requests.py): at once for a book its
bookTicker contradicted (it resyncs), and for a book waiting for one longer than `ASK_AFTER_SECONDS`
(the snapshot went by before this stage read the topic), then again after `ASK_AGAIN_SECONDS`, doubling
up to `ASK_AGAIN_MOST_SECONDS`, while it waits. While snapshots keep arriving for other books the
ingestion is working through its queue (400 books at 50 weight each take minutes of the REST budget): a
waiting book then first asks after `ASK_AGAIN_SECONDS`, not `ASK_AFTER_SECONDS`, instead of asking for
what is already queued. The decisions are pure (`due`); `SnapshotAsker` sends them."""

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
ASK_AGAIN_MOST_SECONDS = 960.0


class AskPlan:
    """Per book waiting for a snapshot: since when (this stage's clock), when it last asked and how often;
    and when the last snapshot of any book arrived (the ingestion busy syncing)."""

    def __init__(
        self, after: float = ASK_AFTER_SECONDS, again: float = ASK_AGAIN_SECONDS, most: float = ASK_AGAIN_MOST_SECONDS
    ):
        self.after, self.again, self.most = after, again, most
        self.waiting_since: dict[str, float] = {}
        self.asked_at: dict[str, float] = {}
        self.asks: dict[str, int] = {}
        self.snapshots, self.snapshot_at = 0, float("-inf")

    def due(
        self, waiting: Iterable[str], mismatched: Iterable[str], now: float, snapshots: int = 0
    ) -> list[tuple[str, str]]:
        """(symbol, reason) to ask for now: `waiting` are the books without a sync, `mismatched` those that
        resynced on a mismatch since the last call, `snapshots` how many snapshots this stage has read."""
        if snapshots != self.snapshots:
            self.snapshots, self.snapshot_at = snapshots, now
        quiet = now - self.snapshot_at >= self.after
        out = []
        for symbol in mismatched:
            out.append((symbol, MISMATCH))
            self.waiting_since[symbol] = self.asked_at[symbol] = now
            self.asks[symbol] = 1
        waiting = set(waiting)
        for symbol in [s for s in self.waiting_since if s not in waiting]:  # synced meanwhile
            del self.waiting_since[symbol]
            self.asked_at.pop(symbol, None)
            self.asks.pop(symbol, None)
        for symbol in sorted(waiting):
            since = self.waiting_since.setdefault(symbol, now)
            asks = self.asks.get(symbol, 0)
            waited = now - self.asked_at.get(symbol, since)
            if asks == 0:
                ask = waited >= self.after and (quiet or waited >= self.again)
            else:
                ask = waited >= min(self.again * 2 ** (asks - 1), self.most)
            if ask:
                out.append((symbol, WAITING))
                late = asks == 0 and waited >= self.again  # a first ask as late as a second: the schedule's 2nd step
                self.asked_at[symbol], self.asks[symbol] = now, asks + (2 if late else 1)
        return out


class SnapshotAsker:
    """Sends the plan's requests into binance.depth_requests."""

    def __init__(self, bootstrap: str, topic: str, security: dict[str, Any]):
        self.topic = topic
        self.plan = AskPlan()
        self.sent = 0
        self.producer = Producer({"bootstrap.servers": bootstrap, **security, "acks": "all", "linger.ms": 50,
                                  "client.id": "cryptomon-book-asks"})  # fmt: skip

    def tick(self, waiting: Iterable[str], mismatched: Iterable[str], snapshots: int) -> None:
        for symbol, reason in self.plan.due(waiting, mismatched, time.monotonic(), snapshots):
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
