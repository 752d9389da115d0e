"""`cryptomon book`: binance.depth (+ binance.book_ticker for the check) -> order books -> TimescaleDB's
order_book_snapshots. A consumer group like the worker's: several book stages share the symbols by
partition (the `range` assignor gives one stage the same partitions of both topics, and a symbol's records
are in the same partition of each). Where it stands is kept in the database, in the transaction of the
rows (book/store.py), not in Kafka's committed offsets: a restart, however it stopped, loads the books of
its last checkpoint, reads again from there and writes the same rows (no-ops), none missing.
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal

import orjson
from confluent_kafka import OFFSET_END, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cryptomon.backoff import Backoff
from cryptomon.book.keeper import BookKeeper, BookRow, Checkpoint
from cryptomon.book.metrics import LIQUIDITY_HISTORY, LiquidityWatch, Window
from cryptomon.book.snapshot_asks import SnapshotAsker
from cryptomon.book.store import BookStore, DeadLetterRow
from cryptomon.errors import BadData, Unavailable
from cryptomon.kafka.clients import STAGE_CONSUMER, consumer_config
from cryptomon.kafka.security import librdkafka_security
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_DEPTH, BOOK_TICKER, DEPTH_REQUESTS, SESSION_HEADER
from cryptomon.observability import health_server
from cryptomon.runtime import FreedMemory
from cryptomon.settings import Settings
from cryptomon.stopping import stop_on_signals

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5  # rows written at least this often
ASK_SECONDS = 1.0  # how often the books waiting for a snapshot are looked at (book/snapshot_asks.py)
MAX_PENDING_ROWS = 50_000  # rows held while the database is away; beyond it consumption pauses
# freed heap given back to the OS once this many buffered diffs (~1.2 kB each, packed) went since their peak:
# a resync of every book buffers minutes of diffs, freed as the snapshots come (cryptomon.runtime)
RELEASE_AFTER_DIFFS = 20_000


class BookService:
    def __init__(self, settings: Settings, health_port: int | None = None):
        self.settings = settings
        self.group = settings.book_group
        self.depth_topic, self.ticker_topic = topic_name(BOOK_DEPTH), topic_name(BOOK_TICKER)
        liquidity = LiquidityWatch(settings.liquidity_band, Decimal(str(settings.liquidity_drop_fraction)))
        self.keeper = BookKeeper(self.depth_topic, settings.book_levels, settings.book_snapshot_seconds * 1000,
                                 settings.book_metrics_seconds * 1000, liquidity)  # fmt: skip
        self.windows: dict[tuple[str, int], Window] = {}  # book_metrics windows to write
        self.store = BookStore(settings.pg_dsn, self.group)
        self.skew_ms = settings.max_clock_skew_ms
        self.rows: list[BookRow] = []
        self.letters: list[DeadLetterRow] = []
        self.stop_event = threading.Event()
        self.assigned: list[TopicPartition] = []
        self.paused = False
        self.db_ok = False
        self.last_flush = self.last_checkpoint = time.monotonic()
        self.rows_written = 0
        self.windows_written = 0  # book_metrics upserts
        self.dead_letters = 0
        self.checkpoints = 0
        self.db_failures = 0
        self.consumer = Consumer(
            consumer_config(
                settings.kafka_bootstrap,
                self.group,
                extra={
                    **librdkafka_security(settings),
                    # partition p of binance.depth and of binance.book_ticker hold the same symbols: one stage
                    "partition.assignment.strategy": "range",
                    **STAGE_CONSUMER,
                    "client.id": "cryptomon-book",
                },
            )
        )
        self.asker = SnapshotAsker(settings.kafka_bootstrap, topic_name(DEPTH_REQUESTS), librdkafka_security(settings))
        self.last_ask = time.monotonic()
        self.freed = FreedMemory(RELEASE_AFTER_DIFFS)
        self.registry = CollectorRegistry()
        self.registry.register(self)
        port = settings.book_health_port if health_port is None else health_port
        self.health_server = health_server(settings, port, self.health, self.registry)

    # ---------------------------------------------------------------- assignment

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Each partition from this group's checkpoint (its books restored), or, never read by the group,
        from CRYPTOMON_BOOK_START_LOOKBACK_SECONDS ago."""
        parts = sorted({p.partition for p in partitions})
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                states, positions = self.store.load(parts)
                break
            except Unavailable as exc:  # no checkpoint read, no record read: the order of things must hold
                log.warning("cannot read the book checkpoint (%s): retrying", exc)
                time.sleep(backoff.next_delay())
        marks = {p: mark for (t, p), (_, mark) in positions.items() if t == self.depth_topic}
        self.keeper.restore([s for s in states if s.partition in parts], marks)
        since = int((time.time() - self.settings.book_start_lookback_seconds) * 1000)
        start = min([since, *(m for m in marks.values() if m > 0)])  # the earliest event time to be read again
        self._restore_windows(start - (LIQUIDITY_HISTORY + 1) * self.keeper.window_ms)
        fresh = [
            TopicPartition(p.topic, p.partition, since) for p in partitions if (p.topic, p.partition) not in positions
        ]
        starts = {(p.topic, p.partition): p.offset for p in consumer.offsets_for_times(fresh, 10.0)} if fresh else {}
        out = []
        for p in partitions:
            key = (p.topic, p.partition)
            offset = positions[key][0] if key in positions else starts.get(key, OFFSET_END)
            out.append(TopicPartition(p.topic, p.partition, offset if offset >= 0 else OFFSET_END))
        self.assigned = out
        log.info(
            "assigned %s; %d books restored",
            ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in out),
            len(states),
        )
        consumer.assign(out)

    def _restore_windows(self, since_ms: int) -> None:
        """The metric windows the records to be read may add to, as written (retried while the database is away)."""
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                self.keeper.restore_windows(self.store.load_windows(since_ms, LIQUIDITY_HISTORY + 1))
                return
            except Unavailable as exc:
                log.warning("cannot read the book metric windows (%s): retrying", exc)
                time.sleep(backoff.next_delay())

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before another stage takes these partitions: everything written, a checkpoint, the books dropped."""
        self._write(checkpoint=True, until_written=True)
        for p in {p.partition for p in partitions}:
            self.keeper.forget_partition(p)
        consumer.unassign()
        self.assigned = []

    # ---------------------------------------------------------------- loop

    def run(self) -> None:
        if self.health_server:
            self.health_server.start()
        self.consumer.subscribe([self.depth_topic, self.ticker_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)  # fmt: skip
        try:
            while not self.stop_event.is_set():
                messages = self.consumer.consume(500, timeout=0.2)
                for msg in messages:
                    self._handle(msg)
                now = time.monotonic()
                if self.keeper.mismatched or now - self.last_ask >= ASK_SECONDS:
                    self.last_ask = now
                    mismatched, self.keeper.mismatched = self.keeper.mismatched, []
                    self.asker.tick(self.keeper.waiting(), mismatched, self.keeper.queue_news.drain())
                    if self.freed.observe(self.keeper.buffered()):
                        log.info("buffered diffs went to their snapshots: freed memory given back to the OS")
                if now - self.last_flush >= FLUSH_SECONDS:
                    self._write(checkpoint=now - self.last_checkpoint >= self.settings.book_checkpoint_seconds)
        finally:
            self._write(checkpoint=True, until_written=True, give_up_after=30.0)
            self.consumer.close()
            self.asker.close()
            self.store.close()
            if self.health_server:
                self.health_server.stop()

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka: %s", err)
            return
        topic, part, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        try:
            value = orjson.loads(msg.value() or b"")
            if not isinstance(value, dict):
                raise BadData("bad_record", f"a JSON {type(value).__name__}")
            if topic == self.depth_topic:
                kind, ts = msg.timestamp()
                latest = ts + self.skew_ms if kind != TIMESTAMP_NOT_AVAILABLE else None
                self.rows += self.keeper.on_depth(value, part, offset, latest, _session(msg))
            else:
                self.keeper.on_ticker(value, topic, part, offset, _session(msg))
        except (BadData, orjson.JSONDecodeError) as exc:
            reason = exc.reason if isinstance(exc, BadData) else "not_json"
            self.keeper.next_offsets[(topic, part)] = offset + 1
            self.dead_letters += 1
            log.warning("dead letter from %s[%d]@%d: %s", topic, part, offset, exc)
            self.letters.append((topic, part, offset, msg.key(), msg.value() or b"", f"{reason}: {exc}"[:1000]))

    def _write(self, checkpoint: bool = False, until_written: bool = False, give_up_after: float = 3600.0) -> None:
        """Rows, dead letters and (when due) a checkpoint, in one transaction; while the database is away
        they are kept (consumption paused when they grow) and tried again."""
        backoff, started = Backoff(0.5, 10.0), time.monotonic()
        while True:
            self.last_flush = time.monotonic()
            point = self._checkpoint() if checkpoint else None
            self.windows.update({(w.symbol, w.start_ms): w for w in self.keeper.take_windows()})
            try:
                self.store.write(self.rows, self.letters, point, list(self.windows.values()))
            except Unavailable as exc:
                self.db_ok = False
                self.db_failures += 1
                log.warning("cannot write to the database (%s): %d rows kept", exc, len(self.rows))
                if len(self.rows) > MAX_PENDING_ROWS and not self.paused and self.assigned:
                    self.consumer.pause(self.assigned)
                    self.paused = True
                if not until_written or time.monotonic() - started > give_up_after:
                    return
                time.sleep(backoff.next_delay())
                continue
            self.db_ok = True
            self.rows_written += len(self.rows)
            self.windows_written += len(self.windows)
            self.rows, self.letters, self.windows = [], [], {}
            if point is not None:
                self.checkpoints += 1
                self.last_checkpoint = time.monotonic()
                offsets = [TopicPartition(t, p, o) for (t, p), (o, _) in point.positions.items()]
                if offsets:  # for lag tools; the database holds the truth
                    try:
                        self.consumer.commit(offsets=offsets, asynchronous=True)
                    except Exception as exc:
                        log.debug("offset commit: %s", exc)
            if self.paused:
                self.consumer.resume(self.assigned)
                self.paused = False
            return

    def _checkpoint(self) -> Checkpoint:
        """The keeper's checkpoint, and where the consumer stands in partitions that brought no record yet
        (a restart must not skip what comes into them meanwhile)."""
        point = self.keeper.checkpoint()
        if self.assigned:
            for tp in self.consumer.position(self.assigned):
                if tp.offset >= 0 and (tp.topic, tp.partition) not in point.positions:
                    point.positions[(tp.topic, tp.partition)] = (tp.offset, 0)
        return point

    # ---------------------------------------------------------------- health

    def health(self) -> tuple[bool, dict]:
        books = self.keeper.health()
        body = {
            "database_ok": self.db_ok,
            "assigned": [f"{p.topic}[{p.partition}]" for p in self.assigned],
            "books": books,
            "books_synced": sum(1 for b in books.values() if b["synced"]),
            "rows_written": self.rows_written,
            "rows_pending": len(self.rows),
            "metric_windows_written": self.windows_written,
            "dead_letters": self.dead_letters,
            "checkpoints": self.checkpoints,
            "seconds_since_checkpoint": round(time.monotonic() - self.last_checkpoint, 1),
            "mismatches": sum(b["mismatches"] for b in books.values()),
            "snapshots_asked": self.asker.sent,
            "buffered_diffs": self.keeper.buffered(),
            "memory_releases": self.freed.releases,
        }
        return self.db_ok and not self.paused, body

    def collect(self):
        books = self.keeper.health()
        per_symbol = {
            "synced": ("1 while the symbol's book is synced", lambda b: int(b["synced"])),
            "resyncs": ("Resyncs of the symbol's book (gaps)", lambda b: b["resyncs"]),
            "checks": ("Book tops compared with bookTicker", lambda b: b["checks"]),
            "mismatches": ("Book tops that differed from bookTicker", lambda b: b["mismatches"]),
        }
        for name, (doc, get) in per_symbol.items():
            family = GaugeMetricFamily(f"cryptomon_book_{name}", doc, labels=["symbol"])
            for sym, b in books.items():
                family.add_metric([sym], get(b))
            yield family
        for name, doc, value in (
            ("rows_written", "order_book_snapshots rows written", self.rows_written),
            ("dead_letters", "Records set aside into dead_letters", self.dead_letters),
            ("checkpoints", "Checkpoints written", self.checkpoints),
            ("db_failures", "Writes the database refused (kept, tried again)", self.db_failures),
            ("memory_releases", "Freed heap given back to the OS after buffered diffs went", self.freed.releases),
        ):
            yield CounterMetricFamily(f"cryptomon_book_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "cryptomon_book_buffered_diffs", "Diffs held by books waiting for a snapshot", value=self.keeper.buffered()
        )


def main(settings: Settings) -> None:
    service = BookService(settings)
    stop_on_signals(service.stop_event)
    service.run()


def _session(msg: Message) -> int | None:
    """The connection session the ingestion stamped a record with (None: not one of its records)."""
    headers = msg.headers() or ()
    for name, raw in headers.items() if isinstance(headers, dict) else headers:
        if name == SESSION_HEADER and isinstance(raw, bytes) and raw.isdigit() and len(raw) <= 20:
            return int(raw)
    return None
