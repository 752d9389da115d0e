"""`cryptomon feed sim`: an exchange simulator that speaks Binance's wire protocol.

Serves, on one port:
  GET  /stream?streams=btcusdt@trade/...    combined-stream WebSocket, frames {"stream":..,"data":..}
  GET  /ws/<stream>                         raw single stream
  GET  /api/v3/aggTrades?symbol=&fromId=&limit=
  GET  /api/v3/historicalTrades?symbol=&fromId=&limit=
  GET  /api/v3/trades?symbol=&limit=        /api/v3/ping  /api/v3/time
and, for tests and demos (not part of Binance's API):
  GET  /sim/stats                           what was generated and sent, per symbol and kind
  POST /sim/drop                            close every WebSocket connection (server side)
  POST /sim/stall?seconds=S                 keep connections open but send nothing for S seconds
  POST /sim/inject?kind=malformed|duplicate|reorder&count=N
  POST /sim/conditions?volatility=&volume=&spread=
  POST /sim/pause  /sim/resume

The market keeps running while no client is connected (as a real exchange does), so a reconnecting
client misses events and has to backfill them over REST. With `max_steps`, generation stops after
that many market steps per symbol, which gives tests an exact expected total.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

from cryptomon.feed.market import Conditions, Market
from cryptomon.feed.replay import Item, ReplayHistory
from cryptomon.feed.scenarios import SCENARIOS, Phase

log = logging.getLogger(__name__)

MALFORMED = [
    b"this is not json",
    b'{"stream":"dogeusdt@trade","data":{"e":"trade","s":"DOGEUSDT","t":1}}',  # unknown stream
    b'{"stream":"%(sym)s@trade","data":{"e":"trade","E":1,"s":"%(SYM)s","t":"not-an-int","p":"1.0","q":"1.0","T":1,"m":true}}',
    b'{"stream":"%(sym)s@bookTicker","data":{"u":1,"s":"%(SYM)s","b":"1.0","B":"1.0"}}',  # missing ask
    b"[1,2,3]",
]


@dataclass
class Client:
    ws: web.WebSocketResponse
    streams: set[str]
    raw_stream: bool = False
    stalled_until: float = 0.0


@dataclass
class Stats:
    steps: Counter = field(default_factory=Counter)  # per symbol
    generated: Counter = field(default_factory=Counter)  # (symbol, kind)
    sent: Counter = field(default_factory=Counter)  # (symbol, kind), frames delivered to >= 1 client
    malformed_sent: int = 0
    duplicates_sent: int = 0
    reordered: int = 0
    connections: int = 0
    drops: int = 0


class Simulator:
    def __init__(
        self,
        symbols: tuple[str, ...],
        rate: float = 100.0,
        seed: int = 1,
        scenario: str = "calm",
        max_steps: int | None = None,
        wait_for_client: bool = True,
        source: Iterator[Item] | None = None,
    ):
        self.symbols = symbols
        # market steps per second over all symbols; for a replay, events per second (0: as fast as possible)
        self.rate = rate
        self.market = Market(symbols, seed=seed)
        self.source = source
        self.history = ReplayHistory() if source is not None else self.market
        self.phases: list[Phase] = list(SCENARIOS[scenario])
        self.conditions = Conditions()
        self.max_steps = max_steps
        self.wait_for_client = wait_for_client
        self.clients: list[Client] = []
        self.stats = Stats()
        self.pending_faults: Counter = Counter()
        self.paused = asyncio.Event()
        self.paused.set()  # set = running
        self.first_client = asyncio.Event()
        self.done = asyncio.Event()
        self._last_frame: tuple[str, str, bytes] | None = None
        self._held: tuple[str, str, bytes] | None = None
        self._task: asyncio.Task | None = None
        self._symbol_cycle = itertools.cycle(symbols)
        self.ready_frames: int | None = None  # firehose mode: frames pre-generated

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
            now_ms = int(time.time() * 1000)
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
            await asyncio.sleep(0)
        self.done.set()
        log.info("simulator finished: %s steps", dict(self.stats.steps))

    async def _firehose(self) -> None:
        """rate <= 0: pre-generate every frame, then send them as fast as the client takes them
        (for benchmarks: the simulator's own generation cost stays out of the measurement)."""
        if self.max_steps is None:
            raise ValueError("the firehose mode (rate 0) needs max_steps")
        frames: list[tuple[str, str, str, str]] = []
        now_ms = int(time.time() * 1000)
        for _ in range(self.max_steps):
            for symbol in self.symbols:
                self.stats.steps[symbol] += 1
                for kind, payload in self.market.step(symbol, now_ms, self.conditions):
                    self.stats.generated[(symbol, kind)] += 1
                    stream = f"{symbol.lower()}@{kind}"
                    frames.append((symbol, kind, stream, orjson.dumps({"stream": stream, "data": payload}).decode()))
        self.ready_frames = len(frames)
        await self.first_client.wait()
        for i, (symbol, kind, stream, frame) in enumerate(frames):
            for c in self.clients:
                if stream in c.streams:
                    await c.ws.send_str(frame)
            self.stats.sent[(symbol, kind)] += 1
            if i % 512 == 0:
                await asyncio.sleep(0)
        self.done.set()

    async def _replay(self) -> None:
        """Serve a recorded feed in its order, paced at `rate` events/s; REST serves what was replayed."""
        if self.wait_for_client:
            await self.first_client.wait()
        start = time.monotonic()
        assert self.source is not None and isinstance(self.history, ReplayHistory)
        for n, (symbol, kind, payload) in enumerate(self.source):
            await self.paused.wait()
            if self.rate > 0:
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif n % 512 == 0:
                await asyncio.sleep(0)
            self.history.add(symbol, kind, payload)
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
                asyncio.get_running_loop().create_task(self.drop())
            elif kind == "stall":
                self.stall(count)
            else:
                self.pending_faults[kind] += int(count)

    async def _emit(self, symbol: str, kind: str, payload: dict) -> None:
        stream = f"{symbol.lower()}@{kind}"
        frame = orjson.dumps({"stream": stream, "data": payload})
        if self.pending_faults["reorder"] and kind == "trade" and self._held is None:
            self.pending_faults["reorder"] -= 1
            self._held = (symbol, stream, frame)  # sent after the next frame
            self.stats.reordered += 1
            return
        await self._send(symbol, kind, stream, frame)
        if self._held is not None:
            held, self._held = self._held, None
            await self._send(held[0], "trade", held[1], held[2])
        # an injected fault counts once a client received it: one that would have gone to no client (all
        # disconnected or stalled) stays pending for the next frame
        if self.pending_faults["duplicate"] and await self._broadcast(stream, frame):
            self.pending_faults["duplicate"] -= 1
            self.stats.duplicates_sent += 1
        if self.pending_faults["malformed"]:
            bad = MALFORMED[self.stats.malformed_sent % len(MALFORMED)]
            bad = bad.replace(b"%(sym)s", symbol.lower().encode()).replace(b"%(SYM)s", symbol.encode())
            if await self._broadcast(stream, bad, any_stream=True):
                self.pending_faults["malformed"] -= 1
                self.stats.malformed_sent += 1

    async def _send(self, symbol: str, kind: str, stream: str, frame: bytes) -> None:
        if await self._broadcast(stream, frame):
            self.stats.sent[(symbol, kind)] += 1

    async def _broadcast(self, stream: str, frame: bytes, any_stream: bool = False) -> bool:
        delivered = False
        now = time.monotonic()
        for c in list(self.clients):
            if (not any_stream and stream not in c.streams) or c.stalled_until > now or c.ws.closed:
                continue
            data = frame
            if c.raw_stream and frame.startswith(b'{"stream"'):
                data = orjson.dumps(orjson.loads(frame)["data"])
            try:
                await c.ws.send_str(data.decode())  # Binance sends text frames
                delivered = True
            except (ConnectionError, RuntimeError):
                pass
        return delivered

    # ---------------------------------------------------------------- faults

    async def drop(self) -> int:
        clients, self.clients = self.clients, []
        for c in clients:
            await c.ws.close(code=1001, message=b"simulated drop")
        self.stats.drops += 1
        return len(clients)

    def stall(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        for c in self.clients:
            c.stalled_until = until

    # ---------------------------------------------------------------- HTTP handlers

    async def ws_combined(self, request: web.Request) -> web.WebSocketResponse:
        streams = {s for s in request.query.get("streams", "").split("/") if s}
        return await self._serve_ws(request, streams, raw=False)

    async def ws_raw(self, request: web.Request) -> web.WebSocketResponse:
        return await self._serve_ws(request, {request.match_info["stream"]}, raw=True)

    async def _serve_ws(self, request: web.Request, streams: set[str], raw: bool) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0)  # Binance pings every 20 s
        await ws.prepare(request)
        client = Client(ws, streams, raw_stream=raw)
        self.clients.append(client)
        self.stats.connections += 1
        self.first_client.set()
        log.info("client connected: %d streams", len(streams))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            if client in self.clients:
                self.clients.remove(client)
        return ws

    def _symbol(self, request: web.Request) -> str:
        symbol = request.query.get("symbol", "").upper()
        if symbol not in self.symbols:
            raise web.HTTPBadRequest(text='{"code":-1121,"msg":"Invalid symbol."}', content_type="application/json")
        return symbol

    @staticmethod
    def _limit(request: web.Request, default: int = 500) -> int:
        try:
            return max(1, min(1000, int(request.query.get("limit", default))))
        except ValueError:
            raise web.HTTPBadRequest(
                text='{"code":-1100,"msg":"Illegal characters found in parameter \'limit\'."}',
                content_type="application/json",
            ) from None

    @staticmethod
    def _from_id(request: web.Request) -> int | None:
        value = request.query.get("fromId")
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    async def agg_trades(self, request: web.Request) -> web.Response:
        rows = self.history.aggs_from(self._symbol(request), self._from_id(request), self._limit(request))
        return web.Response(body=orjson.dumps(rows), content_type="application/json")

    async def historical_trades(self, request: web.Request) -> web.Response:
        rows = self.history.trades_from(self._symbol(request), self._from_id(request), self._limit(request))
        return web.Response(body=orjson.dumps(rows), content_type="application/json")

    async def recent_trades(self, request: web.Request) -> web.Response:
        rows = self.history.trades_from(self._symbol(request), None, self._limit(request))
        return web.Response(body=orjson.dumps(rows), content_type="application/json")

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def server_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    def stats_json(self) -> dict:
        per_symbol = {}
        for s in self.symbols:
            gen = {k: self.stats.generated[(s, k)] for k in ("trade", "aggTrade", "bookTicker")}
            if isinstance(self.history, ReplayHistory):
                trades, aggs = self.history.trades.get(s, []), self.history.aggs.get(s, [])
                trade_ids = [trades[0]["t"], trades[-1]["t"]] if trades else None
                agg_ids = [aggs[0]["a"], aggs[-1]["a"]] if aggs else None
            else:
                st = self.market.state[s]
                trade_ids = [st.next_trade_id - gen["trade"], st.next_trade_id - 1]
                agg_ids = [st.next_agg_id - gen["aggTrade"], st.next_agg_id - 1]
            per_symbol[s] = {
                "steps": self.stats.steps[s],
                "trade_ids": trade_ids,
                "agg_ids": agg_ids,
                "generated": gen,
                "sent": {k: self.stats.sent[(s, k)] for k in ("trade", "aggTrade", "bookTicker")},
            }
        return {
            "symbols": per_symbol,
            "done": self.done.is_set(),
            "ready_frames": self.ready_frames,
            "connections": self.stats.connections,
            "connected": len(self.clients),
            "drops": self.stats.drops,
            "malformed_sent": self.stats.malformed_sent,
            "duplicates_sent": self.stats.duplicates_sent,
            "reordered": self.stats.reordered,
        }

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats_json()), content_type="application/json")

    async def drop_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"dropped": await self.drop()})

    async def stall_handler(self, request: web.Request) -> web.Response:
        self.stall(float(request.query.get("seconds", "5")))
        return web.json_response({"stalled": len(self.clients)})

    async def inject_handler(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "")
        if kind not in ("malformed", "duplicate", "reorder"):
            raise web.HTTPBadRequest(text="kind must be malformed, duplicate or reorder")
        self.pending_faults[kind] += int(request.query.get("count", "1"))
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
        app = web.Application()
        app.router.add_get("/stream", self.ws_combined)
        app.router.add_get("/ws/{stream}", self.ws_raw)
        app.router.add_get("/api/v3/aggTrades", self.agg_trades)
        app.router.add_get("/api/v3/historicalTrades", self.historical_trades)
        app.router.add_get("/api/v3/trades", self.recent_trades)
        app.router.add_get("/api/v3/ping", self.ping)
        app.router.add_get("/api/v3/time", self.server_time)
        app.router.add_get("/sim/stats", self.stats_handler)
        app.router.add_post("/sim/drop", self.drop_handler)
        app.router.add_post("/sim/stall", self.stall_handler)
        app.router.add_post("/sim/inject", self.inject_handler)
        app.router.add_post("/sim/conditions", self.conditions_handler)
        app.router.add_post("/sim/pause", self.pause_handler)
        app.router.add_post("/sim/resume", self.resume_handler)

        async def lifecycle(app: web.Application):
            self._task = asyncio.get_running_loop().create_task(self.run())
            yield
            self._task.cancel()
            for c in list(self.clients):
                await c.ws.close()

        app.cleanup_ctx.append(lifecycle)
        return app


async def serve(sim: Simulator, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("exchange simulator on ws://%s:%d/stream and http://%s:%d/api/v3", host, port, host, port)
    return runner


def run_forever(sim: Simulator, host: str, port: int) -> None:
    async def main() -> None:
        runner = await serve(sim, host, port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
