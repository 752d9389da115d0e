"""`cryptomon feed sim`: an exchange simulator that real Binance clients accept, with Binance's limits. This
module is the engine between the market model and the clients: generation, fan-out, faults, and the
`/sim/*` control endpoints for tests (listed in docs/design.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from cryptomon.binance.schema import AGG_TRADE, BOOK_TICKER_EVENT, DEPTH_SNAPSHOT, KINDS, TRADE
from cryptomon.binance.streams import split_stream, stream_name
from cryptomon.errors import ConfigError
from cryptomon.simulator.depth_faults import DEPTH_FAULTS, DepthFaults
from cryptomon.simulator.enforcement import RequestWeights
from cryptomon.simulator.instruments import Instrument, instrument
from cryptomon.simulator.market import TRADES_PER_STEP, Conditions, Market
from cryptomon.simulator.replay import ReplayHistory, Timed
from cryptomon.simulator.rest_api import RestApi
from cryptomon.simulator.scenarios import SCENARIOS, Phase
from cryptomon.simulator.ws_protocol import Connection, SimLimits, StreamProtocol

log = logging.getLogger(__name__)

MALFORMED = [
    b"this is not json",
    b'{"stream":"dogeusdt@trade","data":{"e":"trade","s":"DOGEUSDT","t":1}}',  # unknown stream
    b'{"stream":"%(sym)s@trade","data":{"e":"trade","E":1,"s":"%(SYM)s","t":"not-an-int","p":"1.0","q":"1.0","T":1,"m":true}}',
    b'{"stream":"%(sym)s@bookTicker","data":{"u":1,"s":"%(SYM)s","b":"1.0","B":"1.0"}}',  # missing ask
    b"[1,2,3]",
]
KLINE_PUSH_S = 2.0  # Binance pushes kline updates every 2 s
HISTORY_BUDGET = 2_000_000  # trades (and aggTrades) kept over all symbols at least, unless --history says otherwise
# and at least this long of each symbol's trades at the market's rate: Binance serves any past trade id, and a
# backfill at the ingestion's share of the REST weight (historicalTrades: 1,000 ids for 25 of 3,000 a minute,
# 2,000 trades/s) of a 30 s stall at 20,000 events/s (~440,000 trades) reaches its last ids ~4 minutes later
HISTORY_SECONDS = 600


def history_per_symbol(rate: float, trading: int, listed: int) -> int:
    """Trades (and aggTrades) kept per symbol: a share of HISTORY_BUDGET over the listed symbols (1,000 to
    100,000), or HISTORY_SECONDS of a symbol's trades at `rate` market steps a second over `trading` symbols
    if that is more."""
    share = max(1_000, min(100_000, HISTORY_BUDGET // max(1, listed)))
    mean_trades = sum(TRADES_PER_STEP) / len(TRADES_PER_STEP)
    return max(share, math.ceil(rate / max(1, trading) * mean_trades * HISTORY_SECONDS))


@dataclass
class Stats:
    """What the simulator generated and sent, per symbol and kind, and the faults and limits it applied."""

    steps: Counter = field(default_factory=Counter)  # per symbol
    generated: Counter = field(default_factory=Counter)  # (symbol, kind)
    sent: Counter = field(default_factory=Counter)  # (symbol, kind), frames delivered to >= 1 client
    malformed_sent: int = 0
    duplicates_sent: int = 0
    reordered: int = 0
    connections: int = 0
    drops: int = 0
    depth_sent: int = 0  # depth diffs delivered to >= 1 client


class Simulator:
    """The exchange simulator: market generation, fan-out to subscribers, faults; REST and WebSocket on one port."""

    def __init__(
        self,
        symbols: tuple[str, ...],
        rate: float = 100.0,
        seed: int = 1,
        scenario: str = "calm",
        max_steps: int | None = None,
        wait_for_client: bool = True,
        source: Iterator[Timed] | None = None,
        instruments: dict[str, Instrument] | None = None,
        limits: SimLimits | None = None,
        history: int | None = None,
        book_updates: float = 0.0,
        speed: float = 0.0,
        snapshots: dict[str, dict] | None = None,
    ):
        # the instruments exchangeInfo lists; the TRADING ones among them generate the market
        self.instruments = instruments or {s: instrument(s) for s in symbols}
        self.symbols = tuple(s for s in symbols if self.instruments[s].status == "TRADING")
        # market steps per second over all symbols; for a replay, events per second (0: as fast as possible)
        self.rate = rate
        self.book_updates = book_updates  # extra bookTicker-only updates per market step (quotes move more)
        self.speed = speed  # a replay with receive times: paced at that many times the recorded pace
        market_rate = 0.0 if source is not None else rate  # a replay serves what it replayed (ReplayHistory)
        per_symbol = history or history_per_symbol(market_rate, len(self.symbols), len(self.instruments))
        self.market = Market(tuple(self.instruments), seed=seed, history=per_symbol, instruments=self.instruments)
        self.source = source
        # a replay serves what it replayed, and the depth snapshots recorded (`snapshots`: the first of each symbol)
        self.history: Market | ReplayHistory = ReplayHistory(snapshots) if source is not None else self.market
        self.phases: list[Phase] = list(SCENARIOS[scenario])
        self.conditions = Conditions()
        self.max_steps = max_steps
        self.wait_for_client = wait_for_client
        self.limits = limits or SimLimits()
        self.protocol = StreamProtocol(self, self.limits)
        self.rest = RestApi(self, RequestWeights(self.limits.weight_limit, self.limits.weight_window,
                                                 self.limits.ban_seconds))  # fmt: skip
        self.connections: list[Connection] = []
        self.subscribers: dict[str, set[Connection]] = {}
        self.stats = Stats()
        self.pending_faults: Counter = Counter()
        self.depth_faults = DepthFaults()
        self.paused = asyncio.Event()
        self.paused.set()  # set = running
        self.first_client = asyncio.Event()
        self.done = asyncio.Event()
        self._held: tuple[str, str, dict] | None = None
        self._tasks: list[asyncio.Task] = []
        self._symbol_cycle = itertools.cycle(self.symbols)
        self._depth_sent: dict[str, int] = {}  # per symbol: the u of its last depthUpdate
        # depth streams someone has listened to: published from then on, listened to or not, as Binance's
        # are (a client that reconnects has missed the diffs sent meanwhile, and its book must resync)
        self._depth_streams: set[str] = set()
        self.ready_frames: int | None = None  # firehose mode: frames pre-generated

    # ---------------------------------------------------------------- subscriptions

    def attach(self, conn: Connection, streams: list[str]) -> None:
        self.connections.append(conn)
        self.stats.connections += 1
        self.subscribe(conn, streams)
        self.first_client.set()

    def detach(self, conn: Connection) -> None:
        self.unsubscribe(conn, list(conn.streams))
        if conn in self.connections:
            self.connections.remove(conn)

    def subscribe(self, conn: Connection, streams: list[str]) -> None:
        for s in streams:
            conn.streams.add(s)
            self.subscribers.setdefault(s, set()).add(conn)
            if "@depth" in s:
                self._depth_streams.add(s)

    def unsubscribe(self, conn: Connection, streams: list[str]) -> None:
        for s in streams:
            conn.streams.discard(s)
            subs = self.subscribers.get(s)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.subscribers[s]

    # ---------------------------------------------------------------- generation loop

    async def run(self) -> None:
        if self.source is not None:
            await self._replay()
            return
        if self.rate <= 0:
            await self._firehose()
            return
        if self.wait_for_client:
            await self.first_client.wait()
        start = time.monotonic()
        steps_done = 0
        phase_idx, phase_end = -1, start
        rng = self.market.rng
        while not self._finished():
            await self.paused.wait()
            now = time.monotonic()
            if now >= phase_end and phase_idx + 1 < len(self.phases):
                phase_idx += 1
                phase = self.phases[phase_idx]
                phase_end = now + phase.seconds
                self._enter_phase(phase)
            due = int((now - start) * self.rate) - steps_done
            if due <= 0:
                await asyncio.sleep(max(0.0005, (steps_done + 1) / self.rate - (now - start)))
                continue
            now_ms = time.time_ns() // 1_000_000
            for _ in range(min(due, 2000)):
                if self._finished():
                    break
                symbol = next(self._symbol_cycle)
                if self.max_steps is not None and self.stats.steps[symbol] >= self.max_steps:
                    continue
                self.stats.steps[symbol] += 1
                steps_done += 1
                for kind, payload in self.market.step(symbol, now_ms, self.conditions):
                    self.stats.generated[(symbol, kind)] += 1
                    await self._emit(symbol, kind, payload)
                extra = int(self.book_updates) + (rng.random() < self.book_updates % 1)
                for _ in range(extra):
                    self.stats.generated[(symbol, BOOK_TICKER_EVENT)] += 1
                    await self._emit(symbol, BOOK_TICKER_EVENT, self.market.book(symbol, self.conditions))
            await asyncio.sleep(0)
        self.done.set()
        log.info("simulator finished: %d steps", sum(self.stats.steps.values()))

    async def _firehose(self) -> None:
        """rate <= 0: pre-generate every frame, then send them as fast as the client takes them
        (for benchmarks: the simulator's own generation cost stays out of the measurement)."""
        if self.max_steps is None:
            raise ConfigError("the firehose mode (rate 0) needs max_steps")
        frames: list[tuple[str, str, str, str]] = []
        now_ms = time.time_ns() // 1_000_000
        for _ in range(self.max_steps):
            for symbol in self.symbols:
                self.stats.steps[symbol] += 1
                for kind, payload in self.market.step(symbol, now_ms, self.conditions):
                    self.stats.generated[(symbol, kind)] += 1
                    stream = stream_name(symbol, kind)
                    frames.append((symbol, kind, stream, orjson.dumps({"stream": stream, "data": payload}).decode()))
        self.ready_frames = len(frames)
        await self.first_client.wait()
        for i, (symbol, kind, stream, frame) in enumerate(frames):
            for c in list(self.subscribers.get(stream, ())):
                await c.ws.send_str(frame)
            self.stats.sent[(symbol, kind)] += 1
            if i % 512 == 0:
                await asyncio.sleep(0)
        self.done.set()

    async def _replay(self) -> None:
        """Serve a recorded feed in its order: at `speed` times the recorded pace where the capture has
        receive times, else `rate` events/s (0: as fast as possible); REST serves what was replayed."""
        if self.wait_for_client:
            await self.first_client.wait()
        start = time.monotonic()
        assert self.source is not None and isinstance(self.history, ReplayHistory)
        first: int | None = None
        for n, (received, symbol, kind, payload) in enumerate(self.source):
            await self.paused.wait()
            delay = 0.0
            if self.speed > 0 and received is not None:
                first = received if first is None else first
                delay = start + (received - first) / 1000 / self.speed - time.monotonic()
            elif self.rate > 0:
                delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 512 == 0:
                await asyncio.sleep(0)
            self.history.add(symbol, kind, payload)
            if kind == DEPTH_SNAPSHOT:  # a REST answer the recorder fetched: served at /api/v3/depth, not streamed
                continue
            self.stats.generated[(symbol, kind)] += 1
            await self._emit(symbol, kind, payload)
        self.done.set()
        log.info("replay finished: %d events", sum(self.stats.generated.values()))

    def _finished(self) -> bool:
        return self.max_steps is not None and all(self.stats.steps[s] >= self.max_steps for s in self.symbols)

    def _enter_phase(self, phase: Phase) -> None:
        log.info("scenario phase %s", phase.name)
        self.conditions = phase.conditions
        for kind, count in phase.faults.items():
            if kind == "drop":
                self._tasks.append(asyncio.get_running_loop().create_task(self.drop()))
            elif kind == "stall":
                self.stall(count)
            else:
                self.pending_faults[kind] += int(count)

    # ---------------------------------------------------------------- fan-out

    async def _emit(self, symbol: str, kind: str, payload: dict) -> None:
        stream = stream_name(symbol, kind)
        if self.pending_faults["reorder"] and kind == TRADE and self._held is None:
            self.pending_faults["reorder"] -= 1
            self._held = (symbol, stream, payload)  # sent after the next frame
            self.stats.reordered += 1
            return
        if await self._broadcast(stream, payload):
            self.stats.sent[(symbol, kind)] += 1
        if self._held is not None:
            held, self._held = self._held, None
            if await self._broadcast(held[1], held[2]):
                self.stats.sent[(held[0], TRADE)] += 1
        # an injected fault counts once a client received it: one that would have gone to no client (all
        # disconnected or stalled) stays pending for the next frame
        if self.pending_faults["duplicate"] and await self._broadcast(stream, payload):
            self.pending_faults["duplicate"] -= 1
            self.stats.duplicates_sent += 1
        if self.pending_faults["malformed"]:
            bad = MALFORMED[self.stats.malformed_sent % len(MALFORMED)]
            bad = bad.replace(b"%(sym)s", symbol.lower().encode()).replace(b"%(SYM)s", symbol.encode())
            if await self._send_all(bad.decode()):
                self.pending_faults["malformed"] -= 1
                self.stats.malformed_sent += 1

    async def _broadcast(self, stream: str, payload: dict) -> bool:
        subs = self.subscribers.get(stream)
        if not subs:
            return False
        delivered = False
        now = time.monotonic()
        combined = raw = None
        for c in list(subs):
            if c.stalled_until > now or c.ws.closed:
                continue
            if c.combined:
                combined = combined or orjson.dumps({"stream": stream, "data": payload}).decode()
                text = combined
            else:
                raw = raw or orjson.dumps(payload).decode()
                text = raw
            try:
                await c.ws.send_str(text)  # Binance sends text frames
                delivered = True
            except (ConnectionError, RuntimeError):
                pass
        return delivered

    async def _send_all(self, text: str) -> bool:
        delivered = False
        now = time.monotonic()
        for c in list(self.connections):
            if c.stalled_until > now or c.ws.closed:
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await c.ws.send_str(text)
                delivered = True
        return delivered

    async def _periodic_streams(self) -> None:
        """depth@100ms every 100 ms, depth every second, kline_1m every 2 s, for the symbols someone
        listens to (depth: that anyone has listened to, see `_depth_streams`): each depth event carries the
        levels that changed since the last one (U..u update ids), so a client that applies them to a
        /api/v3/depth snapshot keeps the simulator's book."""
        tick = 0
        while self.source is None:  # a replay's depth is the recorded one
            await asyncio.sleep(0.1)
            tick += 1
            now_ms = time.time_ns() // 1_000_000
            for stream in [*self._depth_streams, *(s for s in self.subscribers if "@kline_" in s)]:
                symbol, kind = split_stream(stream)
                if symbol not in self.market.state:
                    continue
                if kind == "depth@100ms" or (kind == "depth" and tick % 10 == 0):
                    payload = self._depth_update(symbol, now_ms)
                    if not payload or stream not in self.subscribers:
                        continue  # nobody listens now: the diff is gone for good, as on Binance
                    corrupt = self.depth_faults.pending[("depth_corrupt", symbol)]
                    best_bid = self.market.depth_levels(symbol, 1)[0][0] if corrupt else None
                    for diff in self.depth_faults.diffs_to_send(symbol, payload, best_bid):
                        if await self._broadcast(stream, diff):
                            self.stats.depth_sent += 1
                elif kind == "kline_1m" and tick % int(KLINE_PUSH_S * 10) == 0:
                    event = self.market.kline_event(symbol, now_ms)
                    if event:
                        await self._broadcast(stream, event)

    def _depth_update(self, symbol: str, now_ms: int) -> dict | None:
        """The symbol's next depthUpdate: every level changed since the last one (U..u: the update ids in
        between), None when its book has not changed."""
        st = self.market.state[symbol]
        last_u = self._depth_sent.get(symbol, 0)
        if last_u == st.last_update_id:
            return None
        self._depth_sent[symbol] = st.last_update_id
        bids, asks = self.market.depth_diff(symbol)
        return {"e": "depthUpdate", "E": now_ms, "s": symbol, "U": last_u + 1 if last_u else st.last_update_id,
                "u": st.last_update_id, "b": bids, "a": asks}  # fmt: skip

    # ---------------------------------------------------------------- faults

    async def drop(self) -> int:
        conns = list(self.connections)
        for c in conns:
            await c.ws.close(code=1001, message=b"simulated drop")
        self.stats.drops += 1
        return len(conns)

    def stall(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        for c in self.connections:
            c.stalled_until = until

    # ---------------------------------------------------------------- control endpoints

    def stats_json(self) -> dict:
        per_symbol = {}
        for s in self.symbols:
            gen = {k: self.stats.generated[(s, k)] for k in KINDS}
            if isinstance(self.history, ReplayHistory):
                trades, aggs = self.history.trades.get(s, []), self.history.aggs.get(s, [])
                trade_ids = [trades[0]["t"], trades[-1]["t"]] if trades else None
                agg_ids = [aggs[0]["a"], aggs[-1]["a"]] if aggs else None
            else:
                st = self.market.state[s]
                trade_ids = [st.next_trade_id - gen[TRADE], st.next_trade_id - 1]
                agg_ids = [st.next_agg_id - gen[AGG_TRADE], st.next_agg_id - 1]
            per_symbol[s] = {
                "steps": self.stats.steps[s],
                "trade_ids": trade_ids,
                "agg_ids": agg_ids,
                "generated": gen,
                "sent": {k: self.stats.sent[(s, k)] for k in KINDS},
            }
        return {
            "symbols": per_symbol,
            "done": self.done.is_set(),
            "ready_frames": self.ready_frames,
            "connections": self.stats.connections,
            "connected": len(self.connections),
            "drops": self.stats.drops,
            "depth_sent": self.stats.depth_sent,
            "malformed_sent": self.stats.malformed_sent,
            "duplicates_sent": self.stats.duplicates_sent,
            "reordered": self.stats.reordered,
            "depth_faults": dict(self.depth_faults.applied),
            "refused": dict(self.protocol.refused),
            "rest": {
                "requests": self.rest.requests,
                "429": self.rest.weights.counts[429],
                "418": self.rest.weights.counts[418],
            },
            "history_per_symbol": self.market.history,
        }

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats_json()), content_type="application/json")

    async def drop_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"dropped": await self.drop()})

    async def stall_handler(self, request: web.Request) -> web.Response:
        self.stall(float(request.query.get("seconds", "5")))
        return web.json_response({"stalled": len(self.connections)})

    async def inject_handler(self, request: web.Request) -> web.Response:
        kind, count = request.query.get("kind", ""), int(request.query.get("count", "1"))
        if kind in DEPTH_FAULTS:
            symbol = request.query.get("symbol", "").upper()
            if symbol not in self.market.state:
                raise web.HTTPBadRequest(text=f"a depth fault needs the symbol= of a simulated book: {symbol!r}")
            kept = None
            if kind == "depth_old_snapshot":  # the book as it is now, answered later
                kept = self.market.depth_snapshot(symbol, 5000)
            self.depth_faults.arm(kind, symbol, count, kept)
            return web.json_response({"pending": {f"{f}:{s}": n for (f, s), n in self.depth_faults.pending.items()}})
        if kind not in ("malformed", "duplicate", "reorder"):
            raise web.HTTPBadRequest(text=f"kind must be malformed, duplicate, reorder or one of {DEPTH_FAULTS}")
        self.pending_faults[kind] += count
        return web.json_response({"pending": dict(self.pending_faults)})

    async def conditions_handler(self, request: web.Request) -> web.Response:
        q = request.query
        self.conditions = Conditions(
            float(q.get("volatility", 1)), float(q.get("volume", 1)), float(q.get("spread", 1))
        )
        return web.json_response(self.conditions.__dict__)

    async def pause_handler(self, request: web.Request) -> web.Response:
        self.paused.clear()
        return web.json_response({"paused": True})

    async def resume_handler(self, request: web.Request) -> web.Response:
        self.paused.set()
        return web.json_response({"paused": False})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.rest.middleware])
        app.router.add_get("/stream", self.protocol.combined)
        app.router.add_get("/ws", self.protocol.raw)
        app.router.add_get("/ws/{streams:.*}", self.protocol.raw)
        self.rest.routes(app)
        app.router.add_get("/sim/stats", self.stats_handler)
        app.router.add_post("/sim/drop", self.drop_handler)
        app.router.add_post("/sim/stall", self.stall_handler)
        app.router.add_post("/sim/inject", self.inject_handler)
        app.router.add_post("/sim/conditions", self.conditions_handler)
        app.router.add_post("/sim/pause", self.pause_handler)
        app.router.add_post("/sim/resume", self.resume_handler)

        async def lifecycle(app: web.Application):
            loop = asyncio.get_running_loop()
            self._tasks += [loop.create_task(self.run()), loop.create_task(self._periodic_streams())]
            yield
            for t in self._tasks:
                t.cancel()
            for c in list(self.connections):
                await c.ws.close()

        app.cleanup_ctx.append(lifecycle)
        return app


# a URL with 1,024 streams is ~25 KB: the request line must fit
MAX_LINE_BYTES = 64 * 1024


async def serve(sim: Simulator, host: str, port: int, ssl_context=None) -> web.AppRunner:
    runner = web.AppRunner(sim.app(), access_log=None, max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    scheme = "s" if ssl_context else ""
    log.info("exchange simulator on ws%s://%s:%d/stream and http%s://%s:%d/api/v3", scheme, host, port, scheme,
             host, port)  # fmt: skip
    return runner


def run_forever(sim: Simulator, host: str, port: int, ssl_context=None) -> None:
    async def main() -> None:
        runner = await serve(sim, host, port, ssl_context)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
