"""The simulator's REST API: Binance's public market-data endpoints, their request weights and its errors.

Every answer carries `X-MBX-USED-WEIGHT-1M`; above the weight limit the answer is 429 with `Retry-After`,
and a call inside that wait is a 418 ban (see `limits.RequestWeights`). Errors are Binance's JSON
`{"code": .., "msg": ..}`, also for an unknown path. Fault switches for the ingestion's tests: every
body sent in `chunk_bytes` pieces with `chunk_pause` seconds between them, and `delay` seconds before
each answer (POST /sim/rest?chunk_bytes=&chunk_pause=&delay=).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from aiohttp import web

from cryptomon.binance import limits
from cryptomon.errors import BadData
from cryptomon.simulator.depth_faults import DepthFaults
from cryptomon.simulator.enforcement import RequestWeights
from cryptomon.simulator.instruments import Instrument, exchange_info
from cryptomon.simulator.market import Market
from cryptomon.simulator.replay import ReplayHistory

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEPTH_LIMITS = range(1, 5001)
KLINE_INTERVALS = ("1m",)  # the simulator keeps one-minute klines


@dataclass
class RestFaults:
    """Slow or piecewise REST answers on demand (for tests of the client's body handling)."""

    chunk_bytes: int = 0  # 0: whole bodies
    chunk_pause: float = 0.0
    delay: float = 0.0


class History(Protocol):
    """The trade history the REST API serves from."""

    def trades_from(self, symbol: str, from_id: int | None, limit: int) -> list[dict]: ...
    def aggs_from(self, symbol: str, from_id: int | None, limit: int) -> list[dict]: ...


class Exchange(Protocol):
    """What the API serves (the simulator): its instruments, its market, the trade history and the faults
    armed for its books' snapshots."""

    instruments: dict[str, Instrument]
    market: Market
    depth_faults: DepthFaults

    @property
    def history(self) -> History: ...


class ApiError(BadData):
    """A REST request the simulator refuses: HTTP `status` with Binance's `{"code": …, "msg": …}` body."""

    def __init__(self, code: int, msg: str, status: int = 400, retry_after: int | None = None):
        super().__init__("bad_request", msg)
        self.code, self.msg, self.status, self.retry_after = code, msg, status, retry_after


class RestApi:
    """The simulator's REST API: Binance's market-data endpoints with their weights and JSON errors."""

    def __init__(self, sim: Exchange, weights: RequestWeights):
        self.sim = sim
        self.weights = weights
        self.faults = RestFaults()
        self.requests = 0

    def routes(self, app: web.Application) -> None:
        r = app.router
        for path, handler in (
            ("/api/v3/ping", self.ping),
            ("/api/v3/time", self.time),
            ("/api/v3/exchangeInfo", self.exchange_info),
            ("/api/v3/depth", self.depth),
            ("/api/v3/trades", self.trades),
            ("/api/v3/historicalTrades", self.historical_trades),
            ("/api/v3/aggTrades", self.agg_trades),
            ("/api/v3/klines", self.klines),
            ("/api/v3/uiKlines", self.klines),
            ("/api/v3/avgPrice", self.avg_price),
            ("/api/v3/ticker/24hr", self.ticker_24hr),
            ("/api/v3/ticker/price", self.ticker_price),
            ("/api/v3/ticker/bookTicker", self.book_ticker),
        ):
            r.add_get(path, handler)
        # what unmodified clients read before anything else: ccxt's load_markets asks the USDⓈ-M and COIN-M
        # futures APIs too. The simulator is a spot exchange: its futures markets are empty, not a 404.
        r.add_get("/fapi/v1/exchangeInfo", lambda request: self.futures_exchange_info("U_MARGINED"))
        r.add_get("/dapi/v1/exchangeInfo", lambda request: self.futures_exchange_info("COIN_MARGINED"))
        r.add_post("/sim/rest", self.set_faults)

    # ---------------------------------------------------------------- middleware

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        self.requests += 1
        ip = request.remote or "?"
        try:
            weight = self._weight(request)
        except ApiError:
            weight = 1
        verdict = self.weights.charge(ip, weight, time.time())  # windows on the wall clock, as Binance's minutes
        headers = {limits.USED_WEIGHT_HEADER: str(verdict.used), "X-MBX-USED-WEIGHT": str(verdict.used)}
        if verdict.status != 200:
            headers["Retry-After"] = str(verdict.retry_after)
            banned = verdict.status == 418
            msg = (
                f"Way too much request weight used; IP banned for {verdict.retry_after} seconds. Please use "
                "WebSocket Streams for live updates to avoid bans."
                if banned
                else f"Too much request weight used; current limit is {self.weights.limit} request weight per "
                f"{self.weights.window:g} seconds. Please use WebSocket Streams for live updates to avoid polling "
                "the API."
            )
            return _error(ApiError(limits.ERR_TOO_MANY_REQUESTS, msg, verdict.status), headers)
        try:
            response = await handler(request)
        except ApiError as exc:
            if exc.retry_after is not None:
                headers["Retry-After"] = str(exc.retry_after)
            return _error(exc, headers)
        except web.HTTPException as exc:  # an unknown path or method: still Binance's JSON
            return _error(ApiError(limits.ERR_UNKNOWN, exc.reason, exc.status), headers)
        response.headers.update(headers)
        return await self._deliver(request, response)

    async def _deliver(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        f = self.faults
        if f.delay:
            await asyncio.sleep(f.delay)
        if not f.chunk_bytes or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        body = response.body
        out = web.StreamResponse(status=response.status, headers=response.headers)
        out.content_type = response.content_type
        await out.prepare(request)  # chunked transfer encoding: the client sees the body arrive in pieces
        for i in range(0, len(body), f.chunk_bytes):
            await out.write(body[i : i + f.chunk_bytes])
            if f.chunk_pause and i + f.chunk_bytes < len(body):
                await asyncio.sleep(f.chunk_pause)
        await out.write_eof()
        return out

    def _weight(self, request: web.Request) -> int:
        path, q = request.path, request.query
        if path == "/api/v3/depth":
            return limits.depth_weight(self._int(q, "limit", 100))
        if path == "/api/v3/ticker/24hr":
            return limits.ticker_24hr_weight(self._count(q))
        if path in ("/api/v3/ticker/price", "/api/v3/ticker/bookTicker"):
            return limits.ticker_weight(self._count(q))
        return limits.WEIGHTS.get(path, 1)

    async def set_faults(self, request: web.Request) -> web.Response:
        q = request.query
        self.faults = RestFaults(int(q.get("chunk_bytes", 0)), float(q.get("chunk_pause", 0)), float(q.get("delay", 0)))
        return web.json_response(self.faults.__dict__)

    # ---------------------------------------------------------------- parameters

    def _symbol(self, q) -> str:
        symbol = q.get("symbol")
        if not symbol:
            raise _missing("symbol")
        symbol = symbol.upper()
        if symbol not in self.sim.instruments:
            raise ApiError(limits.ERR_BAD_SYMBOL, "Invalid symbol.")
        return symbol

    def _symbols(self, q) -> list[str] | None:
        """`symbol=X`, `symbols=["X","Y"]` or neither (None: every symbol)."""
        if "symbol" in q and "symbols" in q:
            raise ApiError(limits.ERR_BAD_PARAMS_COMBO, "Combination of optional parameters invalid.")
        if "symbol" in q:
            return [self._symbol(q)]
        if "symbols" not in q:
            return None
        try:
            names = orjson.loads(q["symbols"])
        except orjson.JSONDecodeError:
            names = None
        if not isinstance(names, list) or not names or not all(isinstance(s, str) for s in names):
            raise ApiError(limits.ERR_ILLEGAL_CHARS, "Illegal characters found in parameter 'symbols'.")
        bad = [s for s in names if s.upper() not in self.sim.instruments]
        if bad:
            raise ApiError(limits.ERR_BAD_SYMBOL, "Invalid symbol.")
        return [s.upper() for s in names]

    def _count(self, q) -> int | None:
        if "symbol" in q:
            return 1
        try:
            names = orjson.loads(q["symbols"]) if "symbols" in q else None
        except orjson.JSONDecodeError:
            return None
        return len(names) if isinstance(names, list) else None

    @staticmethod
    def _int(q, name: str, default: int | None = None) -> int:
        value = q.get(name)
        if value is None:
            if default is None:
                raise _missing(name)
            return default
        try:
            return int(value)
        except ValueError:
            raise ApiError(limits.ERR_ILLEGAL_CHARS, f"Illegal characters found in parameter '{name}'.") from None

    def _opt_int(self, q, name: str) -> int | None:
        return self._int(q, name) if name in q else None

    def _limit(self, q) -> int:
        return max(1, min(limits.MAX_PAGE, self._int(q, "limit", 500)))

    # ---------------------------------------------------------------- endpoints

    async def ping(self, request: web.Request) -> web.Response:
        return _json({})

    async def time(self, request: web.Request) -> web.Response:
        return _json({"serverTime": _now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        names = self._symbols(request.query)
        instruments = self.sim.instruments
        if names is not None:
            instruments = {s: instruments[s] for s in names}
        return _json(exchange_info(instruments, _now_ms(), self.weights.limit))

    async def futures_exchange_info(self, futures_type: str) -> web.Response:
        return _json({"timezone": "UTC", "serverTime": _now_ms(), "futuresType": futures_type,
                      "rateLimits": exchange_info({}, _now_ms(), self.weights.limit)["rateLimits"],
                      "exchangeFilters": [], "assets": [], "symbols": []})  # fmt: skip

    async def depth(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._symbol(q)
        limit = min(5000, self._int(q, "limit", 100))
        if limit < 1:
            raise ApiError(limits.ERR_ILLEGAL_CHARS, "Illegal characters found in parameter 'limit'.")
        if isinstance(self.sim.history, ReplayHistory):
            recorded = self.sim.history.depth(symbol, limit)
            if recorded is None:
                raise ApiError(limits.ERR_UNKNOWN, f"no depth snapshot of {symbol} was recorded", 503)
            return _json(recorded)
        faults = self.sim.depth_faults
        if faults.refuse_snapshot(symbol):  # as Binance answers above the weight limit
            raise ApiError(limits.ERR_TOO_MANY_REQUESTS, "Too much request weight used (an injected fault).", 429, 1)
        if old := faults.old_snapshot(symbol):
            return _json({**old, "bids": old["bids"][:limit], "asks": old["asks"][:limit]})
        return _json(self.sim.market.depth_snapshot(symbol, limit))

    async def trades(self, request: web.Request) -> web.Response:
        q = request.query
        return _json(self.sim.history.trades_from(self._symbol(q), None, self._limit(q)))

    async def historical_trades(self, request: web.Request) -> web.Response:
        q = request.query
        return _json(self.sim.history.trades_from(self._symbol(q), self._opt_int(q, "fromId"), self._limit(q)))

    async def agg_trades(self, request: web.Request) -> web.Response:
        q = request.query
        symbol, limit = self._symbol(q), self._limit(q)
        from_id, start, end = self._opt_int(q, "fromId"), self._opt_int(q, "startTime"), self._opt_int(q, "endTime")
        if from_id is not None and (start is not None or end is not None):
            raise ApiError(limits.ERR_BAD_PARAMS_COMBO, "Combination of optional parameters invalid.")
        if start is None and end is None:
            return _json(self.sim.history.aggs_from(symbol, from_id, limit))
        return _json(self.sim.market.aggs_from(symbol, None, limit, start, end))

    async def klines(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._symbol(q)
        interval = q.get("interval")
        if not interval:
            raise _missing("interval")
        if interval not in KLINE_INTERVALS:
            raise ApiError(limits.ERR_BAD_INTERVAL, "Invalid interval.")
        rows = self.sim.market.klines(
            symbol, self._opt_int(q, "startTime"), self._opt_int(q, "endTime"), self._limit(q)
        )
        return _json(rows)

    async def avg_price(self, request: web.Request) -> web.Response:
        return _json(self.sim.market.avg_price(self._symbol(request.query)))

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        q = request.query
        mini = q.get("type", "FULL").upper() == "MINI"
        return self._per_symbol(q, lambda s: self.sim.market.ticker_24hr(s, _now_ms(), mini))

    async def ticker_price(self, request: web.Request) -> web.Response:
        return self._per_symbol(request.query, lambda s: {"symbol": s, "price": self.sim.market.last_price(s)})

    async def book_ticker(self, request: web.Request) -> web.Response:
        return self._per_symbol(request.query, self.sim.market.book_ticker)

    def _per_symbol(self, q, view: Callable[[str], dict]) -> web.Response:
        """One object for `symbol=`, a list for `symbols=` or for every symbol."""
        names = self._symbols(q)
        if names is not None and "symbol" in q:
            return _json(view(names[0]))
        return _json([view(s) for s in (names if names is not None else self.sim.instruments)])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def _error(exc: ApiError, headers: dict[str, str]) -> web.Response:
    return web.Response(status=exc.status, body=orjson.dumps({"code": exc.code, "msg": exc.msg}),
                        content_type="application/json", headers=headers)  # fmt: skip


def _missing(name: str) -> ApiError:
    return ApiError(limits.ERR_BAD_PARAM, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
