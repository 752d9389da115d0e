"""One WebSocket connection of the ingestion, kept alive: its streams, reconnects, rotation, watchdog.

The ingestion runs one `StreamConnection` per group of at most 1,024 streams. Each reconnects by itself
with exponential backoff and jitter, treats `CRYPTOMON_WS_STALE_AFTER` seconds of silence as a dead
connection, answers the server's pings (websockets does) and sends none of its own beyond one every 20 s
(Binance counts pings and pongs against 5 messages per second), and replaces itself before Binance's
24-hour cut: the replacement is open and has delivered its first frame before the old connection is
closed and drained, so a rotation loses nothing (the overlap's duplicates are dropped by id downstream).
A changed stream list (the symbol universe moved) is applied the same way. New connections of the
process are paced by a shared `ConnectionGate` within Binance's 300 per 5 minutes. One dead or slow
connection does not hold up the others: each has its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import ClientConnection, connect

from cryptomon.backoff import Backoff
from cryptomon.binance import limits
from cryptomon.binance.streams import combined_stream_url
from cryptomon.diskguard import DiskGuard, DiskNearlyFull
from cryptomon.errors import Unavailable
from cryptomon.ratelimit import Window

log = logging.getLogger(__name__)
# connection sessions: unique per process (its start, in ms, times 1,000) and connection
_SESSIONS = itertools.count(time.time_ns() // 1_000_000 * 1000 + 1)

# pace new connections below Binance's 300 per 5 minutes (leaves room for a restart of the process)
CONNECTIONS_PER_WINDOW = limits.MAX_CONNECTIONS_PER_5_MINUTES * 4 // 5


class StaleConnection(Unavailable):
    """The exchange sent nothing for longer than `stale_after`: the connection is treated as dead."""


class Rotate(Exception):
    """Ends a session to replace its connection (age limit, serverShutdown, new streams). `handover`
    carries an already-open replacement and its first frame, when there is one."""

    def __init__(self, why: str, handover: tuple | None = None):
        super().__init__(why)
        self.handover = handover


class ConnectionGate:
    """The process's new connections, at most `limit` per `window` seconds."""

    def __init__(self, limit: int = CONNECTIONS_PER_WINDOW, window: float = limits.CONNECTION_WINDOW_SECONDS):
        self._window = Window(limit, window)
        self._lock = asyncio.Lock()
        self.waited = 0

    async def admit(self) -> None:
        async with self._lock:
            while not self._window.hit(time.monotonic()):
                self.waited += 1
                log.warning("%d new connections in %.0fs: waiting before the next", self._window.limit,
                            self._window.seconds)  # fmt: skip
                await asyncio.sleep(1.0)


@dataclass
class ConnStats:
    """One connection's counters and times (monotonic)."""

    connected: bool = False
    connected_since: float = 0.0
    last_message: float = 0.0
    frames: int = 0
    reconnects: int = 0
    rotations: int = 0
    disk_pauses: int = 0


@dataclass(frozen=True)
class ConnOptions:
    """How a connection behaves: stale timeout, age before rotation, frame size, reconnect backoff."""

    stale_after: float = 30.0
    max_age: float = 23 * 3600.0
    max_frame_bytes: int = 1 << 20
    backoff_initial: float = 1.0
    backoff_max: float = 60.0


class StreamConnection:
    """One WebSocket to the combined stream for a group of streams, kept alive and rotated without a gap."""

    def __init__(
        self,
        name: str,
        base_url: str,
        streams: list[str],
        handle: Callable[[str | bytes, int], None],
        gate: ConnectionGate,
        disk: DiskGuard,
        options: ConnOptions,
        on_reconnect: Callable[[StreamConnection], None] = lambda c: None,
    ):
        self.name = name
        self.base_url = base_url
        self.streams = list(streams)
        self.handle = handle  # (frame, session); may raise Rotate (serverShutdown)
        self.session = 0
        self.gate = gate
        self.disk = disk
        self.options = options
        self.on_reconnect = on_reconnect
        self.stats = ConnStats()
        self.stopping = asyncio.Event()
        self._handover: tuple | None = None
        self._disk_low: str | None = None
        self._restream = asyncio.Event()  # the stream list changed: rotate onto a new URL

    @property
    def url(self) -> str:
        return combined_stream_url(self.base_url, self.streams)

    def set_streams(self, streams: list[str]) -> None:
        if sorted(streams) != sorted(self.streams):
            self.streams = list(streams)
            self._restream.set()

    def health(self) -> dict:
        st, now = self.stats, time.monotonic()
        return {
            "connected": st.connected,
            "streams": len(self.streams),
            "seconds_since_last_message": round(now - st.last_message, 3) if st.last_message else None,
            "age_seconds": round(now - st.connected_since, 1) if st.connected else None,
            "frames": st.frames,
            "reconnects": st.reconnects,
            "rotations": st.rotations,
        }

    def healthy(self) -> bool:
        st = self.stats
        return st.connected and bool(st.last_message) and time.monotonic() - st.last_message < self.options.stale_after

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        backoff = Backoff(self.options.backoff_initial, self.options.backoff_max, reset_after=30.0)
        handover = None
        while not self.stopping.is_set():
            if self.disk.check():
                await self._wait_for_disk()
                continue
            started = time.monotonic()
            session, handover = handover, None
            try:
                await self._session(session)
            except Rotate as rotate:
                handover = rotate.handover
                backoff.success(float("inf"))  # a planned reconnect starts right away
                self.stats.rotations += 1
                self.on_reconnect(self)
                continue
            except DiskNearlyFull:
                self.stats.reconnects += 1
                self.on_reconnect(self)
                continue  # waits for room at the top of the loop
            except (OSError, TimeoutError, StaleConnection, websockets.exceptions.WebSocketException) as exc:
                log.warning("%s: connection lost: %s", self.name, exc or type(exc).__name__)
            if self.stopping.is_set():
                break
            backoff.success(time.monotonic() - started)
            delay = backoff.next_delay()
            self.stats.reconnects += 1
            self.on_reconnect(self)
            log.info("%s: reconnecting in %.1fs (attempt %d)", self.name, delay, backoff.attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _wait_for_disk(self) -> None:
        while not self.stopping.is_set() and self.disk.check():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.disk.interval * 2)
        if not self.stopping.is_set():
            log.info("%s: disk has room again: reconnecting; the trades missed are backfilled", self.name)

    async def _connect(self) -> ClientConnection:
        await self.gate.admit()
        return await connect(self.url, max_size=self.options.max_frame_bytes, ping_interval=limits.SERVER_PING_INTERVAL_SECONDS,
                             ping_timeout=20, open_timeout=10, close_timeout=2, max_queue=4096)  # fmt: skip

    async def _session(self, handover: tuple | None = None) -> None:
        """One connection: consume until it closes, goes silent, or must be rotated."""
        ws, first = handover if handover else (await self._connect(), None)
        self.session = next(_SESSIONS)  # frames of one session come in order, none lost in between
        self._handover = self._disk_low = None
        self._restream.clear()
        async with ws:
            st = self.stats
            st.connected, st.connected_since, st.last_message = True, time.monotonic(), time.monotonic()
            if first is not None:
                self._frame(first)
            log.info("%s: connected (%d streams)", self.name, len(self.streams))
            watchdog = asyncio.create_task(self._watchdog(ws))
            stop = asyncio.create_task(self.stopping.wait())
            reader = asyncio.create_task(self._read(ws))
            try:
                done, _ = await asyncio.wait({reader, stop, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()  # re-raise Rotate or connection errors
                    if self._handover:  # the old connection was closed and drained for a handover
                        raise Rotate("handover", self._handover)
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

    def _frame(self, raw: str | bytes) -> None:
        st = self.stats
        st.last_message = time.monotonic()
        st.frames += 1
        self.handle(raw, self.session)

    async def _read(self, ws: ClientConnection) -> None:
        frame = self._frame
        async for raw in ws:
            frame(raw)

    async def _watchdog(self, ws: ClientConnection) -> None:
        st = self.stats
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if low := self.disk.check():
                st.disk_pauses += 1
                log.error("%s: %s: disconnecting from the exchange until there is room (trades missed meanwhile "
                          "are backfilled then; bookTicker updates are not)", self.name, low)  # fmt: skip
                self._disk_low = low
                await ws.close()
                await asyncio.Event().wait()  # the reader drains what was received and ends the session
            if now - st.last_message > self.options.stale_after:
                log.warning("%s: no data for %.0fs: treating the connection as dead", self.name, now - st.last_message)
                await ws.close()
                raise StaleConnection("stale connection")
            if now - st.connected_since > self.options.max_age or self._restream.is_set():
                await self._rotate(ws, "a new stream list" if self._restream.is_set() else "max age")

    async def _rotate(self, old: ClientConnection, why: str) -> None:
        """Open the replacement and take its first frame before closing the old connection; the old reader
        then drains what it had queued and ends, and the session goes on with the replacement."""
        log.info("%s: replacing the connection (%s, %.0fs old)", self.name, why,
                 time.monotonic() - self.stats.connected_since)  # fmt: skip
        new = await self._connect()
        first = await new.recv()
        self._handover = (new, first)
        await old.close()
        await asyncio.Event().wait()  # the reader ends the session; this task is cancelled then
