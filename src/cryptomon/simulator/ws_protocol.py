"""The simulator's WebSocket protocol, as Binance's market-data streams speak it: /stream and /ws, live
requests with their answers and error codes, pings and limits (the message table: docs/design.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from aiohttp import WSMsgType, web

from cryptomon.binance import limits
from cryptomon.errors import BadData
from cryptomon.ratelimit import Window

log = logging.getLogger(__name__)

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
MAX_ID_CHARS = 36


@dataclass
class SimLimits:
    """Binance's limits as the simulator enforces them; tests make them smaller or faster."""

    max_streams: int = limits.MAX_STREAMS_PER_CONNECTION
    max_messages: int = limits.MAX_INCOMING_MESSAGES_PER_SECOND
    max_connections: int = limits.MAX_CONNECTIONS_PER_5_MINUTES
    connection_window: float = limits.CONNECTION_WINDOW_SECONDS
    max_age: float = limits.CONNECTION_MAX_AGE_SECONDS
    ping_interval: float = limits.SERVER_PING_INTERVAL_SECONDS
    pong_timeout: float = limits.PONG_TIMEOUT_SECONDS
    weight_limit: int = limits.REQUEST_WEIGHT_PER_MINUTE
    weight_window: float = 60.0
    ban_seconds: float = limits.BAN_MIN_SECONDS


@dataclass(eq=False)
class Connection:
    """One client's WebSocket: its streams, mode (combined or raw) and incoming-message window."""

    ws: web.WebSocketResponse
    ip: str
    combined: bool
    messages: Window
    streams: set[str] = field(default_factory=set)
    opened: float = field(default_factory=time.monotonic)
    last_pong: float = field(default_factory=time.monotonic)
    stalled_until: float = 0.0


class Fanout(Protocol):
    """Who delivers the streams (the simulator): the protocol tells it who listens to what."""

    def attach(self, conn: Connection, streams: list[str]) -> None: ...
    def detach(self, conn: Connection) -> None: ...
    def subscribe(self, conn: Connection, streams: list[str]) -> None: ...
    def unsubscribe(self, conn: Connection, streams: list[str]) -> None: ...


class RequestError(BadData):
    """A client's live request the simulator refuses, answered with Binance's error `code` and `msg`."""

    def __init__(self, code: int, msg: str):
        super().__init__("bad_request", msg)
        self.code, self.msg = code, msg


class StreamProtocol:
    """Binance's WebSocket protocol as the simulator serves it: URLs, live requests, pings, limits."""

    def __init__(self, sim: Fanout, limits: SimLimits):
        self.sim = sim
        self.limits = limits
        self._new_connections: dict[str, Window] = {}
        self.refused = {"connections": 0, "streams": 0, "rate": 0, "pong_timeout": 0, "max_age": 0}

    # ---------------------------------------------------------------- handlers

    async def combined(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, [s for s in request.query.get("streams", "").split("/") if s], True)

    async def raw(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, [s for s in request.match_info.get("streams", "").split("/") if s], False)

    async def serve(self, request: web.Request, streams: list[str], combined: bool) -> web.StreamResponse:
        ip = request.remote or "?"
        lim = self.limits
        window = self._new_connections.setdefault(ip, Window(lim.max_connections, lim.connection_window))
        if not window.hit(time.monotonic()):
            self.refused["connections"] += 1
            log.warning("refused a connection from %s: more than %d in %.0fs", ip, lim.max_connections,
                        lim.connection_window)  # fmt: skip
            return _json_error(429, -1003, f"Too many new connections; the limit is {lim.max_connections} per "
                                           f"{lim.connection_window:g} seconds per IP.")  # fmt: skip
        if len(set(streams)) > lim.max_streams:
            self.refused["streams"] += 1
            return _json_error(400, -1102, f"{len(set(streams))} streams requested; a connection can listen to "
                                           f"at most {lim.max_streams}.")  # fmt: skip
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = Connection(ws, ip, combined, Window(lim.max_messages, 1.0))
        self.sim.attach(conn, streams)
        log.info("client %s connected: %d streams (%s)", ip, len(conn.streams), "combined" if combined else "raw")
        keeper = asyncio.get_running_loop().create_task(self._keepalive(conn))
        try:
            async for msg in ws:
                if not conn.messages.hit(time.monotonic()):
                    self.refused["rate"] += 1
                    log.warning("client %s sent more than %d messages in a second: disconnecting", ip,
                                lim.max_messages)  # fmt: skip
                    await ws.close(code=1008, message=b"Too many messages")
                    break
                if msg.type == WSMsgType.TEXT:
                    await self._request(conn, msg.data)
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    conn.last_pong = time.monotonic()
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            keeper.cancel()
            self.sim.detach(conn)
        return ws

    async def _keepalive(self, conn: Connection) -> None:
        """Ping every ping_interval; close a connection that stopped answering, or that reached max_age."""
        lim = self.limits
        step = min(lim.ping_interval, lim.max_age, 1.0)
        next_ping = time.monotonic() + lim.ping_interval
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not conn.ws.closed:
                await asyncio.sleep(step)
                now = time.monotonic()
                if now - conn.opened >= lim.max_age:
                    self.refused["max_age"] += 1
                    await conn.ws.close(code=1000, message=b"Connection reached its maximum age")
                    return
                if now - conn.last_pong > lim.pong_timeout:
                    self.refused["pong_timeout"] += 1
                    await conn.ws.close(code=1008, message=b"Pong timeout")
                    return
                if now >= next_ping:
                    next_ping = now + lim.ping_interval
                    await conn.ws.ping(b"cryptomon-sim")

    # ---------------------------------------------------------------- live requests

    async def _request(self, conn: Connection, text: str) -> None:
        req_id = None
        try:
            try:
                req = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise RequestError(3, f"Invalid JSON: {exc}") from None
            if not isinstance(req, dict):
                raise RequestError(2, "Invalid request: expected an object")
            req_id = req.get("id")
            if not _valid_id(req_id):
                req_id = None
                raise RequestError(2, "Invalid request: request ID must be an unsigned integer")
            method = req.get("method")
            if method is None:
                raise RequestError(2, "Invalid request: missing field `method`")
            if method not in METHODS:
                raise RequestError(2, f"Invalid request: unknown variant {method}, expected one of "
                                      + ", ".join(f"`{m}`" for m in METHODS))  # fmt: skip
            result = self._execute(conn, method, req.get("params"))
            await conn.ws.send_str(orjson.dumps({"result": result, "id": req_id}).decode())
        except RequestError as exc:
            await conn.ws.send_str(orjson.dumps({"error": {"code": exc.code, "msg": exc.msg}, "id": req_id}).decode())

    def _execute(self, conn: Connection, method: str, params: object) -> object:
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                raise RequestError(2, "Invalid request: params must be an array of stream names")
            if method == "SUBSCRIBE":
                after = conn.streams | set(params)
                if len(after) > self.limits.max_streams:
                    self.refused["streams"] += 1
                    raise RequestError(2, f"Invalid request: {len(after)} streams; a connection can listen to at "
                                          f"most {self.limits.max_streams}")  # fmt: skip
                self.sim.subscribe(conn, params)
            else:
                self.sim.unsubscribe(conn, params)
            return None
        if method == "LIST_SUBSCRIPTIONS":
            return sorted(conn.streams)
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            raise RequestError(2, "Invalid request: property name must be a string")
        if params[0] != "combined":
            raise RequestError(0, "Unknown property")
        if method == "GET_PROPERTY":
            return conn.combined
        if len(params) != 2 or not isinstance(params[1], bool):
            raise RequestError(1, "Invalid value type: expected Boolean")
        conn.combined = params[1]
        return None


def _valid_id(value: object) -> bool:
    """Binance accepts an unsigned integer, a string of up to 36 characters, or null."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS


def _json_error(status: int, code: int, msg: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"code": code, "msg": msg}), content_type="application/json")
