"""`cryptomon ingest`: Binance's market streams -> Kafka, never missing an event. This module wires the
parts (each in a module of its own, see the README's module table): frames are stamped with
`ingestion_timestamp`, validated and produced keyed by symbol; what cannot be routed is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import aiohttp
from confluent_kafka import KafkaException
from confluent_kafka._types import HeadersType
from prometheus_client import CollectorRegistry

from cryptomon.binance.orderbook import DepthSnapshot
from cryptomon.binance.payloads import Validated
from cryptomon.binance.schema import BOOK_TICKER_EVENT, DEPTH, DEPTH_SNAPSHOT, Event
from cryptomon.binance.streams import depth_stream, followed_kinds, streams_of
from cryptomon.diskguard import DiskGuard
from cryptomon.errors import BadData, Unavailable
from cryptomon.ingestion import selection, state
from cryptomon.ingestion.backfill import Backfiller
from cryptomon.ingestion.connection import ConnectionGate, ConnOptions, Rotate, StreamConnection
from cryptomon.ingestion.depth import FORWARD, DepthFeed, SnapshotFetcher
from cryptomon.ingestion.frames import Control, dead_letter_value, encode, encode_snapshot, is_reply, route
from cryptomon.ingestion.health import IngestCollector, IngestHealth, IngestStats, RestReading
from cryptomon.ingestion.producer import KafkaSink
from cryptomon.ingestion.rest_client import RestBudget, RestClient, RestError
from cryptomon.ingestion.resume import last_ids_in_kafka
from cryptomon.ingestion.sequences import DUPLICATE, LATE, RecentIds, SequenceTracker
from cryptomon.ingestion.snapshot_requests import SnapshotRequests
from cryptomon.kafka.security import librdkafka_security
from cryptomon.kafka.topics import topic_name
from cryptomon.names import (
    BOOK_DEPTH,
    BOOK_TICKER,
    DEADLETTER,
    DEPTH_REQUESTS,
    INGEST_STATE,
    ROUTE,
    SESSION_HEADER,
    TRADES,
)
from cryptomon.observability import health_server
from cryptomon.runtime import tune_gc
from cryptomon.settings import Settings
from cryptomon.tasks import TaskKeeper

log = logging.getLogger(__name__)
SESSIONED = frozenset((DEPTH, BOOK_TICKER_EVENT))  # the kinds whose records say their connection session


class Ingestor:
    """The ingestion service: connections, validation, ids, backfill, state and producer, run together."""

    def __init__(self, settings: Settings, health_port: int | None = None):
        self.settings = settings
        self.instance, self.instances = settings.instance
        self.skew_ms = settings.max_clock_skew_ms
        self.dynamic = any(selection.is_pattern(spec) for spec in settings.symbols)
        self.symbols: frozenset[str] = frozenset()
        self.accepting: frozenset[str] = frozenset()  # symbols + those just removed (their connection rotates)
        self.topics = {role: topic_name(role) for role in (TRADES, BOOK_TICKER, BOOK_DEPTH)}
        self.depth_stream = depth_stream(settings.depth)  # None: the book is off
        # the kinds stamped with their connection session, for the book's check: none when the book is off
        # (a header costs librdkafka about 1 us a message)
        self.sessioned = SESSIONED if self.depth_stream else frozenset()
        self._session_headers: tuple[int | None, HeadersType] = (None, [])  # the last session's, reused
        self.kinds = followed_kinds(settings.depth)  # the streams of each symbol, all on one connection
        self.depth = DepthFeed()
        self.snapshots: SnapshotFetcher | None = None
        self.requests: SnapshotRequests | None = None
        self.deadletter_topic = topic_name(DEADLETTER)
        self.security = librdkafka_security(settings)
        self.sink = KafkaSink(
            settings.kafka_bootstrap,
            settings.producer_linger_ms,
            self.deadletter_topic,
            self.security,
            settings.producer_buffer_mb,
        )
        self.tracker = SequenceTracker(settings.resume_max_gap)
        self.recent_book: dict[str, RecentIds] = {}
        self.stats = IngestStats()
        self.disk = DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb)
        self.gate = ConnectionGate()
        self.options = ConnOptions(settings.ws_stale_after, settings.ws_max_age, settings.ws_max_frame_bytes,
                                   settings.backoff_initial, settings.backoff_max)  # fmt: skip
        self.connections: list[StreamConnection] = []
        self._conn_tasks: dict[str, asyncio.Task] = {}
        self.budget = RestBudget(settings.rest_weight_budget, deferrable_share=settings.depth_snapshot_share)
        self.rest: RestClient | None = None
        self.backfill: Backfiller | None = None
        self.publisher = state.StatePublisher(self.sink, topic_name(INGEST_STATE), self.tracker,
                                                settings.state_interval)  # fmt: skip
        self.stopping = asyncio.Event()
        self.keeper = TaskKeeper(settings.backoff_initial, settings.backoff_max)
        self.resumed = 0  # (symbol, kind) streams continued from a previous run
        self.registry = CollectorRegistry()
        self.registry.register(IngestCollector(self.reading))
        port = settings.ingest_health_port if health_port is None else health_port
        self.health_server = health_server(settings, port, self.health, self.registry)

    # ---------------------------------------------------------------- hot path

    def handle(self, raw: str | bytes, session: int | None = None) -> None:
        """One frame (that came over the connection session `session`): routed to Kafka, dropped as a
        duplicate, or dead-lettered; never an exception for the connection (except Rotate, which asks it to
        reconnect) however the frame was made."""
        ingestion_ms = time.time_ns() // 1_000_000
        try:
            self._handle(raw, ingestion_ms, session)
        except Rotate:
            raise
        except BadData as bad:
            self.dead_letter(raw, bad.reason, bad.detail, ingestion_ms)
        except Exception as exc:  # a bug or an input nothing above foresaw: set aside, the stream goes on
            log.exception("frame could not be handled: dead letter")
            self.dead_letter(raw, "internal_error", repr(exc), ingestion_ms)

    def _handle(self, raw: str | bytes, ingestion_ms: int, session: int | None = None) -> None:
        st = self.stats
        try:
            ev = route(raw, self.accepting, ingestion_ms + self.skew_ms, self.depth_stream)
        except BadData as bad:
            if bad.reason == "bad_envelope" and is_reply(raw):
                return  # {"result": .., "id": ..}: an answer to a live request, not data
            self.dead_letter(raw, bad.reason, bad.detail, ingestion_ms)
            return
        if isinstance(ev, Control):
            log.warning("exchange sent %s: reconnecting now", ev.event)
            raise Rotate(ev.event)
        if ev.kind == DEPTH:
            waiting = len(self.depth.need)
            first = ev.first if isinstance(ev, Validated) else ev.data["U"]
            if self.depth.observe(ev.symbol, first, ev.seq) is not FORWARD:
                st.duplicates += 1
                return
            if len(self.depth.need) > waiting and self.snapshots:
                self.snapshots.wake.set()
        elif ev.kind == BOOK_TICKER_EVENT:
            recent = self.recent_book.get(ev.symbol)
            if recent is None:
                recent = self.recent_book[ev.symbol] = RecentIds()
            if recent.seen(ev.seq, ingestion_ms):
                st.duplicates += 1
                return
        else:
            verdict = self.tracker.observe((ev.symbol, ev.kind), ev.seq, time.monotonic())
            if verdict is DUPLICATE:
                st.duplicates += 1
                return
            if verdict is LATE:
                st.late += 1
        # a depth diff and a bookTicker say which connection session they came over (the book's check)
        headers: HeadersType | None = None
        if session is not None and ev.kind in self.sessioned:
            if session != self._session_headers[0]:
                self._session_headers = (session, [(SESSION_HEADER, b"%d" % session)])
            headers = self._session_headers[1]
        self._produce(ev, ingestion_ms, headers=headers)

    def _produce(
        self, ev: Event | Validated, ingestion_ms: int, backfilled: bool = False, headers: HeadersType | None = None
    ) -> None:
        value = encode(ev, ingestion_ms, backfilled)
        self.sink.produce(self.topics[ROUTE[ev.kind]], ev.symbol.encode(), value, headers)
        self.stats.produced[ev.kind] += 1

    def _backfilled(self, ev: Event, ingestion_ms: int) -> None:
        self._produce(ev, ingestion_ms, backfilled=True)

    def _snapshot(self, snapshot: DepthSnapshot, body: dict) -> None:
        """A snapshot that bridges the diffs sent: into the depth topic after them (same key, same partition)."""
        value = encode_snapshot(
            snapshot.symbol, body, self.settings.depth_snapshot_limit, time.time_ns() // 1_000_000, self.depth.need
        )
        self.sink.produce(self.topics[BOOK_DEPTH], snapshot.symbol.encode(), value)
        self.stats.produced[DEPTH_SNAPSHOT] += 1

    def dead_letter(self, raw: str | bytes, reason: str, detail: str, ingestion_ms: int) -> None:
        self.stats.dead_letters[reason] += 1
        log.warning("dead letter (%s): %.300s | %.200r", reason, detail, raw[:200])
        self.sink.produce(self.deadletter_topic, reason.encode(), dead_letter_value(raw, reason, detail, ingestion_ms))

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        if self.health_server:
            self.health_server.start()
        self.rest = RestClient(self.settings.binance_rest_url, self.budget, self.settings.binance_api_key)
        self.backfill = Backfiller(self.rest, self.tracker, self._backfilled, self.dead_letter,
                                   self.settings.backfill_grace, self.settings.backfill_concurrency)  # fmt: skip
        tasks = [self.keeper.start("producer-poll", self._poll_loop)]
        try:
            symbols = await self._resolve()
            await self._resume(frozenset(symbols))
            if not self.stopping.is_set():
                self._apply_universe(symbols)
                tasks += [
                    self.keeper.start("backfill", self.backfill.run),
                    self.keeper.start("state", self.publisher.run),
                ]
                if self.depth_stream:
                    self.snapshots = SnapshotFetcher(self.depth, self.rest, self.settings.depth_snapshot_limit,
                                                     self._snapshot, self.dead_letter)  # fmt: skip
                    tasks.append(self.keeper.start("depth-snapshots", self.snapshots.run))
                    self.requests = SnapshotRequests(self.snapshots, self.dead_letter)
                    requests, topic = self.requests, topic_name(DEPTH_REQUESTS)
                    bootstrap = self.settings.kafka_bootstrap
                    tasks.append(self.keeper.start("depth-requests",
                                                   lambda: requests.run(bootstrap, topic, self.security)))  # fmt: skip
                    if self.settings.depth_resync_seconds:
                        every = float(self.settings.depth_resync_seconds)
                        snapshots = self.snapshots
                        tasks.append(self.keeper.start("depth-resync", lambda: snapshots.resync_loop(every)))
                if self.dynamic:
                    tasks.append(self.keeper.start("symbol-refresh", self._refresh_loop))
                await self.stopping.wait()
        finally:
            for conn in self.connections:
                conn.stopping.set()
            if self._conn_tasks:  # a connection waiting to be restarted is not waited for
                _, waiting = await asyncio.wait(self._conn_tasks.values(), timeout=15)
                for t in waiting:
                    t.cancel()
                await asyncio.gather(*self._conn_tasks.values(), return_exceptions=True)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.publisher.tick()  # the last state whose data is delivered
            left = self.sink.flush(30.0)
            self.publisher.tick()
            self.sink.flush(5.0)
            await self.rest.close()
            log.info("stopped: %d messages produced, %d left undelivered", sum(self.stats.produced.values()), left)
            if self.health_server:
                self.health_server.stop()

    async def _resume(self, followed: frozenset[str]) -> None:
        """Continue each trade/aggTrade stream where the previous run stopped (the durable state, corrected
        by the tail of binance.trades), so that what was streamed while the ingestion was down, and the
        gaps it had not filled, are backfilled."""
        if not self.settings.resume_max_gap:
            return
        try:
            bootstrap = self.settings.kafka_bootstrap
            saved = await asyncio.to_thread(state.load, bootstrap, topic_name(INGEST_STATE), 30.0, self.security)
            tail = await asyncio.to_thread(last_ids_in_kafka, bootstrap, self.topics[TRADES], None, 10_000, 30.0,
                                           self.security)  # fmt: skip
        except (KafkaException, Unavailable) as exc:
            log.warning("cannot read where the previous run stopped (%s): starting without a baseline", exc)
            return
        merged = state.merge(saved, tail)
        for key, (last, gaps) in sorted(merged.items()):  # every stream: a symbol may join later
            self.tracker.seed(key, last, gaps)
        merged = {key: entry for key, entry in merged.items() if key[0] in followed}
        self.resumed = len(merged)
        if merged:
            log.info("resuming after the last ids in Kafka for %d streams (%d open gaps): %s", len(merged),
                     sum(len(g) for _, g in merged.values()),
                     ", ".join(f"{sym} {kind} {last}" for (sym, kind), (last, _) in sorted(merged.items())[:10]))  # fmt: skip

    # ---------------------------------------------------------------- symbols and connections

    async def _resolve(self) -> list[str]:
        """This instance's symbols: the configured names and patterns, patterns resolved from exchangeInfo
        (retried until the exchange answers: without a symbol list there is nothing to follow)."""
        listed: dict[str, str] = {}
        delay = 1.0
        while self.dynamic and not self.stopping.is_set():
            try:
                assert self.rest is not None
                info = await self.rest.get("/api/v3/exchangeInfo", {})
                listed = {x["symbol"]: x["status"] for x in info["symbols"]}
                break
            except (RestError, aiohttp.ClientError, TimeoutError, KeyError, TypeError) as exc:
                log.warning("cannot read exchangeInfo (%s): retrying in %.0fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(60.0, delay * 2)
        return selection.mine(selection.resolve(self.settings.symbols, listed), self.instance, self.instances)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.symbols_refresh)
            symbols = await self._resolve()
            if symbols and frozenset(symbols) != self.symbols:
                self._apply_universe(symbols)

    def _apply_universe(self, symbols: list[str]) -> None:
        """Follow exactly these symbols: connections get their new stream lists (a rotation, nothing lost),
        are added, or stop."""
        added, removed = set(symbols) - self.symbols, self.symbols - set(symbols)
        if self.symbols:
            self.stats.universe_changes += 1
            log.info("symbols changed: %d added %s, %d removed %s", len(added), sorted(added)[:10], len(removed),
                     sorted(removed)[:10])  # fmt: skip
        self.symbols = frozenset(symbols)
        self.accepting = self.symbols | removed
        self.depth.forget(removed)
        groups = selection.shard(symbols, self.settings.ws_streams_per_connection, len(self.kinds))
        log.info("following %d symbols (instance %d of %d) over %d connections", len(symbols), self.instance,
                 self.instances, len(groups))  # fmt: skip
        for i, group in enumerate(groups):
            streams = [s for sym in group for s in streams_of(sym, self.kinds)]
            if i < len(self.connections):
                self.connections[i].set_streams(streams)
                continue
            conn = StreamConnection(f"connection {i}", self.settings.binance_ws_url, streams, self.handle, self.gate,
                                    self.disk, self.options, self._reconnected)  # fmt: skip
            self.connections.append(conn)
            self._conn_tasks[conn.name] = self.keeper.start(conn.name, conn.run)
        for conn in self.connections[len(groups) :]:
            conn.stopping.set()
        self.connections = self.connections[: len(groups)]

    def _reconnected(self, conn: StreamConnection) -> None:
        self.stats.book_ticker_gaps += len(conn.streams) // len(self.kinds)  # bookTicker has no history to backfill

    async def _poll_loop(self) -> None:
        """Serve the producer's delivery callbacks even when no frame arrives."""
        while True:
            self.sink.poll(0)
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- health

    def health(self) -> tuple[bool, dict]:
        reading = self.reading()
        return reading.healthy, reading.body()

    def reading(self) -> IngestHealth:
        """Everything the ingestion reports, read once (for /health and /metrics alike)."""
        st = self.stats
        now = time.monotonic()
        conns = self.connections
        lasts = [c.stats.last_message for c in conns if c.stats.last_message]
        kafka_error_recent = self.sink.last_error is not None and now - self.sink.last_error_at < 30
        bf = self.backfill.stats if self.backfill else None
        gaps = self.tracker.pending()
        oldest = min((self.tracker.found_at(key, start) for key, start, _ in gaps), default=None)
        disk = self.disk.status()
        return IngestHealth(
            healthy=bool(conns)
            and all(c.healthy() for c in conns)
            and not kafka_error_recent
            and self.disk.check() is None,
            connected=bool(conns) and all(c.stats.connected for c in conns),
            connections=[c.health() for c in conns],
            symbols=len(self.symbols),
            instance=f"{self.instance}/{self.instances}",
            seconds_since_last_message=round(now - max(lasts), 3) if lasts else None,
            messages_produced=dict(st.produced),
            messages_delivered={t: n for t, n in self.sink.delivered.items() if t != self.publisher.topic},
            producer_queue=self.sink.queued(),
            frames_received=sum(c.stats.frames for c in conns),
            reconnects=sum(c.stats.reconnects + c.stats.rotations for c in conns),
            duplicates_dropped=st.duplicates,
            late_arrivals=st.late,
            gaps_found=self.tracker.gaps_found,
            gaps_open=len(gaps),
            ids_missed=self.tracker.ids_missed,
            ids_pending_backfill=sum(end - start + 1 for _, start, end in gaps),
            oldest_open_gap_seconds=round(now - oldest, 1) if oldest is not None else None,
            resumed_from_kafka=self.resumed,
            baseline_resets=self.tracker.baseline_resets,
            resume_ids_skipped=self.tracker.resume_ids_skipped,
            gaps_filled=bf.gaps_filled if bf else 0,
            events_backfilled=bf.backfilled if bf else 0,
            ids_unfillable=bf.lost if bf else 0,
            unfillable_reasons=bf.lost_reasons if bf else [],
            backfill_page_failures=bf.page_failures if bf else 0,
            rest=RestReading(
                requests=self.rest.requests if self.rest else 0,
                weight_used_1m=self.rest.last_used_weight if self.rest else None,
                weight_budget_1m=self.budget.budget,
                rate_limited_429=self.budget.limited.get(429, 0),
                banned_418=self.budget.limited.get(418, 0),
            ),
            state_entries_published=self.publisher.published,
            book_ticker_gaps=st.book_ticker_gaps,
            delivery_failures=self.sink.delivery_failures,
            dead_letters=dict(st.dead_letters),
            kafka_last_error=self.sink.last_error,
            disk=self.disk.as_dict(),
            disk_free_bytes=None if disk is None else disk.free_bytes,
            disk_full_pauses=sum(c.stats.disk_pauses for c in conns),
            tasks={name: s.as_dict() for name, s in self.keeper.states.items()},
            task_restarts=self.keeper.restarts(),
            kafka=self.sink.cluster,
            produce_retries=self.sink.retried,
            seconds_since_last_ack=None if self.sink.last_ack_at is None else round(now - self.sink.last_ack_at, 3),
            produce_latency=self.sink.latency.snapshot(),
            depth={**self.snapshots.health(), "requests": self.requests.health() if self.requests else {}}
            if self.snapshots
            else None,
        )


def main(settings: Settings) -> None:
    async def amain() -> None:
        ing = Ingestor(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ing.stopping.set)
        tune_gc()  # start-up is over: the hot path's garbage is acyclic (4.5% of it went to the collector)
        await ing.run()

    asyncio.run(amain())
