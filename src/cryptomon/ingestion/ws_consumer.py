"""`cryptomon ingest`: Binance's market streams -> Kafka, never missing an event. This module wires the
parts together; each has a module of its own:

  universe.py    which symbols (names, patterns such as *USDT, this instance's share) and which connection
  connection.py  one WebSocket per <= 1,024 streams: reconnects, 24 h rotation without a gap, watchdog
  events.py      parse and validate frames, track consecutive ids and gaps (pure)
  backfill.py    gaps filled over REST until they are in, several at a time
  rest.py        the REST client: whole bodies, one request-weight budget, no call inside Retry-After
  state.py       where each stream stands, kept in a compacted topic: restarts resume from there
  producer.py    the idempotent, acks=all producer

Each frame is stamped with `ingestion_timestamp`, validated and produced to `binance.trades` /
`binance.book_ticker` with the symbol as key; anything that cannot be routed goes to the dead-letter
topic with its raw bytes and the reason. On a nearly full disk under the local stack every connection
disconnects until there is room again (see `cryptomon.diskguard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cryptomon.diskguard import DiskGuard
from cryptomon.ingestion import state as durable
from cryptomon.ingestion import universe
from cryptomon.ingestion.backfill import Backfiller
from cryptomon.ingestion.connection import ConnectionGate, ConnOptions, Rotate, StreamConnection
from cryptomon.ingestion.events import (
    DUPLICATE,
    LATE,
    BadFrame,
    Control,
    Event,
    RecentIds,
    SequenceTracker,
    encode,
    parse_frame,
)
from cryptomon.ingestion.producer import KafkaSink
from cryptomon.ingestion.rest import RestBudget, RestClient, RestError
from cryptomon.ingestion.resume import last_ids_in_kafka
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, BOOK_TICKER_EVENT, DEADLETTER, INGEST_STATE, ROUTE, TRADES
from cryptomon.observability import HealthServer
from cryptomon.settings import Settings

log = logging.getLogger("cryptomon.ingestion")


@dataclass
class IngestStats:
    produced: Counter = field(default_factory=Counter)  # per kind
    duplicates: int = 0
    late: int = 0
    dead_letters: Counter = field(default_factory=Counter)  # per reason
    book_ticker_gaps: int = 0
    universe_changes: int = 0


class Ingestor:
    def __init__(self, settings: Settings, health_port: int | None = None):
        self.s = settings
        self.instance, self.instances = settings.instance
        self.dynamic = any(universe.is_pattern(spec) for spec in settings.symbols)
        self.symbols: frozenset[str] = frozenset()
        self.accepting: frozenset[str] = frozenset()  # symbols + those just removed (their connection rotates)
        self.topics = {role: topic_name(role) for role in (TRADES, BOOK_TICKER)}
        self.deadletter_topic = topic_name(DEADLETTER)
        self.sink = KafkaSink(settings.kafka_bootstrap, settings.producer_linger_ms, self.deadletter_topic)
        self.tracker = SequenceTracker(settings.resume_max_gap)
        self.recent_book: dict[str, RecentIds] = {}
        self.stats = IngestStats()
        self.disk = DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb)
        self.gate = ConnectionGate()
        self.options = ConnOptions(settings.ws_stale_after, settings.ws_max_age, settings.ws_max_frame_bytes,
                                   settings.backoff_initial, settings.backoff_max)  # fmt: skip
        self.connections: list[StreamConnection] = []
        self._conn_tasks: dict[str, asyncio.Task] = {}
        self.budget = RestBudget(settings.rest_weight_budget)
        self.rest: RestClient | None = None
        self.backfill: Backfiller | None = None
        self.publisher = durable.StatePublisher(self.sink, topic_name(INGEST_STATE), self.tracker,
                                                settings.state_interval)  # fmt: skip
        self.stopping = asyncio.Event()
        self.resumed = 0  # (symbol, kind) streams continued from a previous run
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        port = settings.ingest_health_port if health_port is None else health_port
        self.health_server = HealthServer(settings.health_host, port, self.health, self.registry) if port else None

    # ---------------------------------------------------------------- hot path

    def handle(self, raw: str | bytes) -> None:
        ingestion_ms = time.time_ns() // 1_000_000
        st = self.stats
        try:
            ev = parse_frame(raw, self.accepting)
        except BadFrame as bad:
            if bad.reason == "bad_envelope" and _is_reply(raw):
                return  # {"result": .., "id": ..}: an answer to a live request, not data
            self.dead_letter(raw, bad.reason, bad.detail, ingestion_ms)
            return
        if isinstance(ev, Control):
            log.warning("exchange sent %s: reconnecting now", ev.event)
            raise Rotate(ev.event)
        if ev.kind == BOOK_TICKER_EVENT:
            recent = self.recent_book.get(ev.symbol)
            if recent is None:
                recent = self.recent_book[ev.symbol] = RecentIds()
            if recent.seen(ev.seq):
                st.duplicates += 1
                return
        else:
            verdict = self.tracker.observe((ev.symbol, ev.kind), ev.seq, time.monotonic())
            if verdict is DUPLICATE:
                st.duplicates += 1
                return
            if verdict is LATE:
                st.late += 1
        self._produce(ev, ingestion_ms)

    def _produce(self, ev: Event, ingestion_ms: int, backfilled: bool = False) -> None:
        self.sink.produce(self.topics[ROUTE[ev.kind]], ev.symbol.encode(), encode(ev, ingestion_ms, backfilled))
        self.stats.produced[ev.kind] += 1

    def _backfilled(self, ev: Event, ingestion_ms: int) -> None:
        self._produce(ev, ingestion_ms, backfilled=True)

    def dead_letter(self, raw: str | bytes, reason: str, detail: str, ingestion_ms: int) -> None:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
        self.stats.dead_letters[reason] += 1
        log.warning("dead letter (%s): %s | %.200s", reason, detail, text)
        value = orjson.dumps(
            {
                "source": "ingestion",
                "reason": reason,
                "detail": detail,
                "raw": text,
                "ingestion_timestamp": ingestion_ms,
            }
        )
        self.sink.produce(self.deadletter_topic, reason.encode(), value)

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        if self.health_server:
            self.health_server.start()
        self.rest = RestClient(self.s.binance_rest_url, self.budget, self.s.binance_api_key)
        self.backfill = Backfiller(self.rest, self.tracker, self._backfilled, self.dead_letter,
                                   self.s.backfill_grace, self.s.backfill_concurrency)  # fmt: skip
        tasks = [asyncio.create_task(self._poll_loop())]
        try:
            symbols = await self._resolve()
            await self._resume(frozenset(symbols))
            if not self.stopping.is_set():
                self._apply_universe(symbols)
                tasks += [asyncio.create_task(self.backfill.run()), asyncio.create_task(self.publisher.run())]
                if self.dynamic:
                    tasks.append(asyncio.create_task(self._refresh_loop()))
                await self.stopping.wait()
        finally:
            for conn in self.connections:
                conn.stopping.set()
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
        if not self.s.resume_max_gap:
            return
        try:
            saved = await asyncio.to_thread(durable.load, self.s.kafka_bootstrap, topic_name(INGEST_STATE))
            tail = await asyncio.to_thread(last_ids_in_kafka, self.s.kafka_bootstrap, self.topics[TRADES], None)
        except KafkaException as exc:
            log.warning("cannot read where the previous run stopped (%s): starting without a baseline", exc)
            return
        merged = durable.merge(saved, tail)
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
        return universe.mine(universe.resolve(self.s.symbols, listed), self.instance, self.instances)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.symbols_refresh)
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
        groups = universe.shard(symbols, self.s.ws_streams_per_connection)
        log.info("following %d symbols (instance %d of %d) over %d connections", len(symbols), self.instance,
                 self.instances, len(groups))  # fmt: skip
        for i, group in enumerate(groups):
            streams = [s for sym in group for s in universe.streams_of(sym)]
            if i < len(self.connections):
                self.connections[i].set_streams(streams)
                continue
            conn = StreamConnection(f"connection {i}", self.s.binance_ws_url, streams, self.handle, self.gate,
                                    self.disk, self.options, self._reconnected)  # fmt: skip
            self.connections.append(conn)
            self._conn_tasks[conn.name] = asyncio.get_running_loop().create_task(conn.run())
        for conn in self.connections[len(groups) :]:
            conn.stopping.set()
        self.connections = self.connections[: len(groups)]

    def _reconnected(self, conn: StreamConnection) -> None:
        self.stats.book_ticker_gaps += len(conn.streams) // 3  # bookTicker has no history to backfill

    async def _poll_loop(self) -> None:
        """Serve the producer's delivery callbacks even when no frame arrives."""
        while True:
            self.sink.poll(0)
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- health

    def health(self) -> tuple[bool, dict]:
        st = self.stats
        now = time.monotonic()
        conns = self.connections
        lasts = [c.stats.last_message for c in conns if c.stats.last_message]
        since = round(now - max(lasts), 3) if lasts else None
        kafka_error_recent = self.sink.last_error is not None and now - self.sink.last_error_at < 30
        bf = self.backfill.stats if self.backfill else None
        gaps = self.tracker.pending()
        oldest = min((self.tracker.found_at(key, start) for key, start, _ in gaps), default=None)
        body = {
            "connected": bool(conns) and all(c.stats.connected for c in conns),
            "connections": [c.health() for c in conns],
            "symbols": len(self.symbols),
            "instance": f"{self.instance}/{self.instances}",
            "seconds_since_last_message": since,
            "messages_produced": dict(st.produced),
            "messages_delivered": {t: n for t, n in self.sink.delivered.items() if t != self.publisher.topic},
            "producer_queue": self.sink.queued(),
            "reconnects": sum(c.stats.reconnects + c.stats.rotations for c in conns),
            "duplicates_dropped": st.duplicates,
            "late_arrivals": st.late,
            "gaps_found": self.tracker.gaps_found,
            "gaps_open": len(gaps),
            "ids_missed": self.tracker.ids_missed,
            "ids_pending_backfill": sum(end - start + 1 for _, start, end in gaps),
            "oldest_open_gap_seconds": round(now - oldest, 1) if oldest is not None else None,
            "resumed_from_kafka": self.resumed,
            "baseline_resets": self.tracker.baseline_resets,
            "resume_ids_skipped": self.tracker.resume_ids_skipped,
            "gaps_filled": bf.gaps_filled if bf else 0,
            "events_backfilled": bf.backfilled if bf else 0,
            "ids_unfillable": bf.lost if bf else 0,
            "unfillable_reasons": bf.lost_reasons if bf else [],
            "backfill_page_failures": bf.page_failures if bf else 0,
            "rest": {
                "requests": self.rest.requests if self.rest else 0,
                "weight_used_1m": self.rest.last_used_weight if self.rest else None,
                "weight_budget_1m": self.budget.budget,
                "rate_limited_429": self.budget.limited.get(429, 0),
                "banned_418": self.budget.limited.get(418, 0),
            },
            "state_entries_published": self.publisher.published,
            "book_ticker_gaps": st.book_ticker_gaps,
            "delivery_failures": self.sink.delivery_failures,
            "dead_letters": dict(st.dead_letters),
            "kafka_last_error": self.sink.last_error,
            "disk": self.disk.as_dict(),
            "disk_full_pauses": sum(c.stats.disk_pauses for c in conns),
        }
        ok = bool(conns) and all(c.healthy() for c in conns) and not kafka_error_recent and self.disk.check() is None
        return ok, body


def _is_reply(raw: str | bytes) -> bool:
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(d, dict) and "id" in d and ("result" in d or "error" in d)


class _Collector:
    """Prometheus view of the ingestion's counters, read at scrape time (nothing on the hot path)."""

    def __init__(self, ing: Ingestor):
        self.ing = ing

    def collect(self):
        ing, st = self.ing, self.ing.stats
        _, h = ing.health()
        produced = CounterMetricFamily(
            "cryptomon_ingest_messages_produced", "Events produced to Kafka", labels=["stream"]
        )
        for kind, n in st.produced.items():
            produced.add_metric([kind], n)
        yield produced
        dead = CounterMetricFamily(
            "cryptomon_ingest_dead_letters", "Frames sent to the dead-letter topic", labels=["reason"]
        )
        for reason, n in st.dead_letters.items():
            dead.add_metric([reason], n)
        yield dead
        limited = CounterMetricFamily(
            "cryptomon_ingest_rest_rate_limited", "REST answers 429 and 418", labels=["status"]
        )
        for status in (429, 418):
            limited.add_metric([str(status)], ing.budget.limited.get(status, 0))
        yield limited
        for name, doc, value in (
            ("frames_received", "WebSocket frames received", sum(c.stats.frames for c in ing.connections)),
            ("reconnects", "WebSocket reconnects and rotations", h["reconnects"]),
            ("duplicates_dropped", "Duplicate events dropped", st.duplicates),
            ("gaps_found", "Gaps in trade/aggTrade ids", ing.tracker.gaps_found),
            ("gaps_filled", "Gaps filled from REST", h["gaps_filled"]),
            ("events_backfilled", "Events fetched from REST", h["events_backfilled"]),
            ("ids_unfillable", "Missing ids the exchange no longer had", h["ids_unfillable"]),
            ("resume_ids_skipped", "Ids missed between two runs, too many to backfill", ing.tracker.resume_ids_skipped),
            ("book_ticker_gaps", "bookTicker gaps (reconnects) per symbol", st.book_ticker_gaps),
            ("delivery_failures", "Kafka delivery failures (each retried)", ing.sink.delivery_failures),
            ("disk_full_pauses", "Disconnects because the state folder's disk was nearly full", h["disk_full_pauses"]),
            ("rest_requests", "REST requests sent", h["rest"]["requests"]),
        ):
            yield CounterMetricFamily(f"cryptomon_ingest_{name}", doc, value=value)
        for name, doc, value in (
            ("connected", "1 while every WebSocket is connected", int(h["connected"])),
            ("connections", "WebSocket connections", len(ing.connections)),
            ("symbols", "Symbols followed", len(ing.symbols)),
            ("gaps_open", "Open gaps in trade/aggTrade ids", h["gaps_open"]),
            ("ids_missing", "Ids waiting for the backfill", h["ids_pending_backfill"]),
            ("oldest_open_gap_seconds", "Age of the oldest open gap", h["oldest_open_gap_seconds"] or 0.0),
            ("rest_weight_used", "REST weight used in the current minute (X-MBX-USED-WEIGHT-1M)",
             h["rest"]["weight_used_1m"] or 0),
            ("seconds_since_last_message", "Age of the last frame", h["seconds_since_last_message"] or float("nan")),
            ("producer_queue", "Messages waiting in the producer", ing.sink.queued()),
        ):  # fmt: skip
            yield GaugeMetricFamily(f"cryptomon_ingest_{name}", doc, value=value)
        disk = ing.disk.status()
        yield GaugeMetricFamily("cryptomon_ingest_disk_free_bytes", "Free bytes on the state folder's disk",
                                value=float("nan") if disk is None else disk.free_bytes)  # fmt: skip


def main(settings: Settings) -> None:
    async def amain() -> None:
        ing = Ingestor(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ing.stopping.set)
        await ing.run()

    asyncio.run(amain())
