"""`cryptomon ingest`: Binance combined stream -> Kafka, never missing an event.

One persistent WebSocket for every symbol x {trade, aggTrade, bookTicker}. Each frame is stamped with
`ingestion_timestamp`, validated and produced to `binance.trades` / `binance.book_ticker` with the symbol
as key. trade and aggTrade ids are consecutive per symbol: a skipped range (after a reconnect, a stall
or a lost frame) is fetched from the REST API and produced with `"backfilled": true`. Anything that
cannot be routed goes to the dead-letter topic with its raw bytes and the reason. On a nearly full disk
under the local stack it disconnects until there is room again (see `cryptomon.diskguard`).
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
import websockets
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from websockets.asyncio.client import connect

from cryptomon.backoff import Backoff
from cryptomon.diskguard import DiskGuard, DiskNearlyFull
from cryptomon.ingestion.events import (
    DUPLICATE,
    LATE,
    BadFrame,
    Control,
    Event,
    RecentIds,
    SequenceTracker,
    agg_trade_from_rest,
    combined_stream_url,
    encode,
    parse_frame,
    trade_from_rest,
)
from cryptomon.ingestion.producer import KafkaSink
from cryptomon.ingestion.resume import last_ids_in_kafka
from cryptomon.kafka.topics import topic_name
from cryptomon.names import AGG_TRADE, BOOK_TICKER, BOOK_TICKER_EVENT, DEADLETTER, ROUTE, TRADES
from cryptomon.observability import HealthServer
from cryptomon.settings import Settings

log = logging.getLogger("cryptomon.ingestion")

REST_PAGE = 1000
MAX_REST_BYTES = 8 << 20
BACKFILL_ATTEMPTS = 5


@dataclass
class IngestStats:
    connected: bool = False
    connected_since: float = 0.0
    last_message: float = 0.0
    frames: int = 0
    produced: Counter = field(default_factory=Counter)  # per kind
    reconnects: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: Counter = field(default_factory=Counter)  # per reason
    gaps_filled: int = 0
    backfilled: int = 0
    unfillable: int = 0
    book_ticker_gaps: int = 0
    disk_pauses: int = 0


class _Rotate(Exception):
    """Ends a session to replace its connection (age limit, serverShutdown). `handover` carries an
    already-open replacement and its first frame, when there is one."""

    def __init__(self, why: str, handover: tuple | None = None):
        super().__init__(why)
        self.handover = handover


class Ingestor:
    def __init__(self, settings: Settings, health_port: int | None = None):
        self.s = settings
        self.symbols = frozenset(settings.symbols)
        self.url = combined_stream_url(settings.binance_ws_url, settings.symbols)
        self.topics = {role: topic_name(role) for role in (TRADES, BOOK_TICKER)}
        self.deadletter_topic = topic_name(DEADLETTER)
        self.sink = KafkaSink(settings.kafka_bootstrap, settings.producer_linger_ms, self.deadletter_topic)
        self.tracker = SequenceTracker(settings.resume_max_gap)
        self.recent_book = {s: RecentIds() for s in settings.symbols}
        self.stats = IngestStats()
        self.disk = DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb)
        self.stopping = asyncio.Event()
        self._handover: tuple | None = None  # (open replacement connection, its first frame) during a rotation
        self.resumed = 0  # (symbol, kind) streams continued from the ids in Kafka at start
        self._disk_low: str | None = None  # why the current connection is being closed for lack of disk
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        port = settings.ingest_health_port if health_port is None else health_port
        self.health_server = HealthServer(settings.health_host, port, self.health, self.registry) if port else None

    # ---------------------------------------------------------------- hot path

    def handle(self, raw: str | bytes) -> None:
        now = time.monotonic()
        ingestion_ms = time.time_ns() // 1_000_000
        st = self.stats
        st.last_message = now
        st.frames += 1
        try:
            ev = parse_frame(raw, self.symbols)
        except BadFrame as bad:
            self.dead_letter(raw, bad.reason, bad.detail, ingestion_ms)
            return
        if isinstance(ev, Control):
            log.warning("exchange sent %s: reconnecting now", ev.event)
            raise _Rotate(ev.event)
        if ev.kind == BOOK_TICKER_EVENT:
            if self.recent_book[ev.symbol].seen(ev.seq):
                st.duplicates += 1
                return
        else:
            verdict = self.tracker.observe((ev.symbol, ev.kind), ev.seq, now)
            if verdict is DUPLICATE:
                st.duplicates += 1
                return
            if verdict is LATE:
                st.late += 1
        self._produce(ev, ingestion_ms)

    def _produce(self, ev: Event, ingestion_ms: int, backfilled: bool = False) -> None:
        self.sink.produce(self.topics[ROUTE[ev.kind]], ev.symbol.encode(), encode(ev, ingestion_ms, backfilled))
        self.stats.produced[ev.kind] += 1

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

    # ---------------------------------------------------------------- connection management

    async def run(self) -> None:
        if self.health_server:
            self.health_server.start()
        backoff = Backoff(self.s.backoff_initial, self.s.backoff_max, reset_after=30.0)
        await self._resume()
        tasks = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._backfill_loop())]
        try:
            handover = None
            while not self.stopping.is_set():
                if self.disk.check():
                    await self._wait_for_disk()
                    continue
                started = time.monotonic()
                session, handover = handover, None
                try:
                    await self._session(session)
                except _Rotate as rotate:
                    handover = rotate.handover
                    backoff.success(float("inf"))  # a planned reconnect starts right away
                    self.stats.reconnects += 1
                    continue
                except DiskNearlyFull:
                    self.stats.reconnects += 1
                    continue  # waits for room at the top of the loop
                except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
                    log.warning("connection to %s lost: %s", self.s.binance_ws_url, exc or type(exc).__name__)
                if self.stopping.is_set():
                    break
                backoff.success(time.monotonic() - started)
                delay = backoff.next_delay()
                self.stats.reconnects += 1
                log.info("reconnecting in %.1fs (attempt %d)", delay, backoff.attempt)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            left = self.sink.flush(30.0)
            log.info("stopped: %d messages produced, %d left undelivered", sum(self.stats.produced.values()), left)
            if self.health_server:
                self.health_server.stop()

    async def _resume(self) -> None:
        """Continue each trade/aggTrade stream after the last id the previous run put in Kafka, so that
        what was streamed while the ingestion was down is backfilled (see cryptomon.ingestion.resume)."""
        if not self.s.resume_max_gap:
            return
        try:
            last = await asyncio.to_thread(last_ids_in_kafka, self.s.kafka_bootstrap, self.topics[TRADES], self.symbols)
        except KafkaException as exc:
            log.warning("cannot read where the previous run stopped (%s): starting without a baseline", exc)
            return
        for key, seq in sorted(last.items()):
            self.tracker.seed(key, seq)
        self.resumed = len(last)
        if last:
            log.info(
                "resuming after the last ids in Kafka: %s",
                ", ".join(f"{sym} {kind} {seq}" for (sym, kind), seq in sorted(last.items())),
            )

    async def _wait_for_disk(self) -> None:
        while not self.stopping.is_set() and self.disk.check():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.disk.interval * 2)
        if not self.stopping.is_set():
            log.info(
                "disk has room again (%.0f MB free): reconnecting; the trades missed are backfilled",
                getattr(self.disk.status(), "free_bytes", float("nan")) / (1 << 20),
            )

    def _connect(self):
        return connect(
            self.url,
            max_size=self.s.ws_max_frame_bytes,
            ping_interval=20,
            ping_timeout=20,
            open_timeout=10,
            close_timeout=2,
            max_queue=4096,
        )

    async def _session(self, handover: tuple | None = None) -> None:
        """One connection: consume until it closes, goes silent, or must be rotated."""
        ws, first = handover if handover else (await self._connect(), None)
        self._handover = self._disk_low = None
        async with ws:
            if first is not None:
                self.handle(first)
            st = self.stats
            st.connected, st.connected_since, st.last_message = True, time.monotonic(), time.monotonic()
            log.info("connected to %s (%d streams)", self.s.binance_ws_url, 3 * len(self.symbols))
            if st.reconnects:
                st.book_ticker_gaps += len(self.symbols)  # bookTicker has no history to backfill
            watchdog = asyncio.create_task(self._watchdog(ws))
            stop = asyncio.create_task(self.stopping.wait())
            try:
                reader = asyncio.create_task(self._read(ws))
                done, _ = await asyncio.wait({reader, stop, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()  # re-raise _Rotate or connection errors
                    if self._handover:  # the old connection was closed and drained for a handover
                        raise _Rotate("max age", self._handover)
                    if self._disk_low:  # closed and drained for lack of disk
                        low, self._disk_low = self._disk_low, None
                        raise DiskNearlyFull(low)
                elif watchdog in done:
                    reader.cancel()
                    watchdog.result()
                else:
                    reader.cancel()
            finally:
                st.connected = False
                watchdog.cancel()
                stop.cancel()

    async def _read(self, ws) -> None:
        handle = self.handle
        async for raw in ws:
            handle(raw)

    async def _watchdog(self, ws) -> None:
        st = self.stats
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if low := self.disk.check():
                st.disk_pauses += 1
                log.error(
                    "%s: disconnecting from the exchange until there is room (trades missed meanwhile are "
                    "backfilled then; bookTicker updates are not)",
                    low,
                )
                self._disk_low = low
                await ws.close()
                await asyncio.Event().wait()  # the reader drains what was received and ends the session
            if now - st.last_message > self.s.ws_stale_after:
                log.warning("no data for %.0fs: treating the connection as dead", now - st.last_message)
                await ws.close()
                raise ConnectionError("stale connection")
            if now - st.connected_since > self.s.ws_max_age:
                await self._rotate(ws)

    async def _rotate(self, old) -> None:
        """Replace a connection nearing Binance's 24 h limit without a gap: the replacement is open and
        has delivered its first frame before the old one is closed; the old reader then drains what it
        had queued and ends, and the session goes on with the replacement. The overlap's duplicates are
        dropped by id."""
        log.info("connection is %.0fs old: opening its replacement", time.monotonic() - self.stats.connected_since)
        new = await self._connect()
        first = await new.recv()
        self._handover = (new, first)
        await old.close()
        await asyncio.Event().wait()  # the reader ends the session; this task is cancelled then

    async def _poll_loop(self) -> None:
        """Serve the producer's delivery callbacks even when no frame arrives."""
        while True:
            self.sink.poll(0)
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- backfill

    async def _backfill_loop(self) -> None:
        headers = {"X-MBX-APIKEY": self.s.binance_api_key} if self.s.binance_api_key else {}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(self.s.binance_rest_url, headers=headers, timeout=timeout) as http:
            while True:
                await asyncio.sleep(0.2)
                for key, start, end in self.tracker.pending(older_than=time.monotonic() - self.s.backfill_grace):
                    await self._backfill(http, key, start, end)

    async def _backfill(self, http: aiohttp.ClientSession, key: tuple[str, str], start: int, end: int) -> None:
        symbol, kind = key
        path, convert, id_field = (
            ("/api/v3/aggTrades", agg_trade_from_rest, "a")
            if kind == AGG_TRADE
            else ("/api/v3/historicalTrades", trade_from_rest, "id")
        )
        from_id, failures, filled = start, 0, 0
        log.info("backfilling %s %s ids %d..%d", symbol, kind, start, end)
        while from_id <= end:
            try:
                async with http.get(path, params={"symbol": symbol, "fromId": from_id, "limit": REST_PAGE}) as resp:
                    body = await resp.content.read(MAX_REST_BYTES + 1)
                    if resp.status != 200 or len(body) > MAX_REST_BYTES:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status, message=body[:200].decode("utf-8", "replace")
                        )
                rows = orjson.loads(body)
            except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
                failures += 1
                if failures >= BACKFILL_ATTEMPTS:
                    break
                log.warning("backfill %s %s from %d failed (%s): retry %d", symbol, kind, from_id, exc, failures)
                await asyncio.sleep(min(10.0, 0.5 * 2**failures))
                continue
            if not rows:
                break
            ingestion_ms = time.time_ns() // 1_000_000
            for row in rows:
                try:
                    ev = convert(symbol, row)
                except (BadFrame, KeyError, TypeError) as exc:
                    self.dead_letter(orjson.dumps(row), "bad_rest_row", repr(exc), ingestion_ms)
                    continue
                if ev.seq > end:
                    break
                if self.tracker.fill(key, ev.seq):
                    self._produce(ev, ingestion_ms, backfilled=True)
                    self.stats.backfilled += 1
                    filled += 1
            next_id = rows[-1][id_field] + 1
            if next_id <= from_id:
                break
            from_id = next_id
        lost = self.tracker.drop_gap(key, start, end)
        if lost:
            self.stats.unfillable += lost
            log.error("could not backfill %d %s %s ids in %d..%d: recorded as lost", lost, symbol, kind, start, end)
        if filled:
            self.stats.gaps_filled += 1

    # ---------------------------------------------------------------- health

    def health(self) -> tuple[bool, dict]:
        st = self.stats
        now = time.monotonic()
        since = round(now - st.last_message, 3) if st.last_message else None
        kafka_error_recent = self.sink.last_error is not None and now - self.sink.last_error_at < 30
        body = {
            "connected": st.connected,
            "seconds_since_last_message": since,
            "messages_produced": dict(st.produced),
            "messages_delivered": dict(self.sink.delivered),
            "producer_queue": self.sink.queued(),
            "reconnects": st.reconnects,
            "duplicates_dropped": st.duplicates,
            "late_arrivals": st.late,
            "gaps_found": self.tracker.gaps_found,
            "ids_missed": self.tracker.ids_missed,
            "resumed_from_kafka": self.resumed,
            "baseline_resets": self.tracker.baseline_resets,
            "resume_ids_skipped": self.tracker.resume_ids_skipped,
            "gaps_filled": st.gaps_filled,
            "events_backfilled": st.backfilled,
            "ids_unfillable": st.unfillable,
            "ids_pending_backfill": self.tracker.missing_count(),
            "book_ticker_gaps": st.book_ticker_gaps,
            "delivery_failures": self.sink.delivery_failures,
            "dead_letters": dict(st.dead_letters),
            "kafka_last_error": self.sink.last_error,
            "disk": self.disk.as_dict(),
            "disk_full_pauses": st.disk_pauses,
        }
        ok = (
            st.connected
            and since is not None
            and since < self.s.ws_stale_after
            and not kafka_error_recent
            and self.disk.check() is None
        )
        return ok, body


class _Collector:
    """Prometheus view of the ingestion's counters, read at scrape time (nothing on the hot path)."""

    def __init__(self, ing: Ingestor):
        self.ing = ing

    def collect(self):
        ing, st = self.ing, self.ing.stats
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
        for name, doc, value in (
            ("frames_received", "WebSocket frames received", st.frames),
            ("reconnects", "WebSocket reconnects", st.reconnects),
            ("duplicates_dropped", "Duplicate events dropped", st.duplicates),
            ("gaps_found", "Gaps in trade/aggTrade ids", ing.tracker.gaps_found),
            ("gaps_filled", "Gaps filled from REST", st.gaps_filled),
            ("events_backfilled", "Events fetched from REST", st.backfilled),
            ("ids_unfillable", "Missing ids that could not be backfilled", st.unfillable),
            ("resume_ids_skipped", "Ids missed between two runs, too many to backfill", ing.tracker.resume_ids_skipped),
            ("book_ticker_gaps", "bookTicker gaps (reconnects) per symbol", st.book_ticker_gaps),
            ("delivery_failures", "Kafka delivery failures (each retried)", ing.sink.delivery_failures),
            ("disk_full_pauses", "Disconnects because the state folder's disk was nearly full", st.disk_pauses),
        ):
            yield CounterMetricFamily(f"cryptomon_ingest_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "cryptomon_ingest_connected", "1 while the WebSocket is connected", value=int(st.connected)
        )
        since = time.monotonic() - st.last_message if st.last_message else float("nan")
        yield GaugeMetricFamily("cryptomon_ingest_seconds_since_last_message", "Age of the last frame", value=since)
        yield GaugeMetricFamily(
            "cryptomon_ingest_producer_queue", "Messages waiting in the producer", value=ing.sink.queued()
        )
        disk = ing.disk.status()
        yield GaugeMetricFamily(
            "cryptomon_ingest_disk_free_bytes",
            "Free bytes on the state folder's disk",
            value=float("nan") if disk is None else disk.free_bytes,
        )


def main(settings: Settings) -> None:
    async def amain() -> None:
        ing = Ingestor(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ing.stopping.set)
        await ing.run()

    asyncio.run(amain())
