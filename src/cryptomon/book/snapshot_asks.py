"""When the book stage asks the ingestion for a snapshot (kafka/depth_requests.py): at once for a book its
bookTicker contradicted (it resyncs), and for a book waiting for one longer than `ASK_AFTER_SECONDS`
(the snapshot went by before this stage read the topic), then again after `ASK_AGAIN_SECONDS`, doubling
up to `ASK_AGAIN_MOST_SECONDS`, while it waits. Each snapshot record the ingestion writes lists the books it
is still fetching a snapshot for (400 books at 50 weight each take minutes of the REST budget): a book
listed in the last `HOLD_SECONDS` is on its way and not asked for. The decisions are pure (`due`);
`SnapshotAsker` sends them."""

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
HOLD_SECONDS = 60.0  # the ingestion lists its queue with every snapshot it sends, seconds apart when busy


class QueueNews:
    """What the snapshot records read since the stage last asked say of the ingestion's queue: the books a
    snapshot came for, and those a record listed as still queued (whichever a book's latest record said)."""

    def __init__(self) -> None:
        self.delivered: set[str] = set()
        self.listed: set[str] = set()

    def note(self, symbol: str, queued: Iterable[str]) -> None:
        self.listed.discard(symbol)
        self.delivered.add(symbol)
        for s in queued:
            self.listed.add(s)
            self.delivered.discard(s)

    def drain(self) -> tuple[set[str], set[str]]:
        out = self.delivered, self.listed
        self.delivered, self.listed = set(), set()
        return out


class AskPlan:
    """Per book waiting for a snapshot: since when (this stage's clock), when it last asked and how often,
    and when the ingestion last listed it as queued."""

    def __init__(
        self,
        after: float = ASK_AFTER_SECONDS,
        again: float = ASK_AGAIN_SECONDS,
        most: float = ASK_AGAIN_MOST_SECONDS,
        hold: float = HOLD_SECONDS,
    ):
        self.after, self.again, self.most, self.hold = after, again, most, hold
        self.waiting_since: dict[str, float] = {}
        self.asked_at: dict[str, float] = {}
        self.asks: dict[str, int] = {}
        self.listed_at: dict[str, float] = {}

    def due(
        self,
        waiting: Iterable[str],
        mismatched: Iterable[str],
        now: float,
        news: tuple[Iterable[str], Iterable[str]] = ((), ()),
    ) -> list[tuple[str, str]]:
        """(symbol, reason) to ask for now: `waiting` are the books without a sync, `mismatched` those that
        resynced on a mismatch since the last call, `news` QueueNews.drain() of the records read since."""
        delivered, listed = news
        for symbol in delivered:
            self.listed_at.pop(symbol, None)
        for symbol in listed:
            self.listed_at[symbol] = now
        out = []
        for symbol in mismatched:  # the ingestion cannot know: always asked
            out.append((symbol, MISMATCH))
            self.waiting_since[symbol] = self.asked_at[symbol] = now
            self.asks[symbol] = 1
        waiting = set(waiting)
        for symbol in [s for s in self.waiting_since if s not in waiting]:  # synced meanwhile
            del self.waiting_since[symbol]
            for kept in (self.asked_at, self.asks, self.listed_at):
                kept.pop(symbol, None)
        for symbol in sorted(waiting):
            since = self.waiting_since.setdefault(symbol, now)
            if now - self.listed_at.get(symbol, float("-inf")) < self.hold:
                continue  # queued at the ingestion: on its way
            asks = self.asks.get(symbol, 0)
            step = self.after if asks == 0 else min(self.again * 2 ** (asks - 1), self.most)
            if now - self.asked_at.get(symbol, since) >= step:
                out.append((symbol, WAITING))
                self.asked_at[symbol], self.asks[symbol] = now, asks + 1
        return out


class SnapshotAsker:
    """Sends the plan's requests into binance.depth_requests."""

    def __init__(self, bootstrap: str, topic: str, security: dict[str, Any]):
        self.topic = topic
        self.plan = AskPlan()
        self.sent = 0
        self.producer = Producer({"bootstrap.servers": bootstrap, **security, "acks": "all", "linger.ms": 50,
                                  "client.id": "cryptomon-book-asks"})  # fmt: skip

    def tick(
        self, waiting: Iterable[str], mismatched: Iterable[str], news: tuple[Iterable[str], Iterable[str]]
    ) -> None:
        for symbol, reason in self.plan.due(waiting, mismatched, time.monotonic(), news):
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
