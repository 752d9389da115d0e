"""Health and metrics endpoints shared by the long-running processes.

GET /health  -> JSON from the process's `health()` callback; HTTP 200 when healthy, 503 otherwise.
GET /metrics -> Prometheus text format from the process's own registry.

The server runs on its own thread and event loop, so it answers even while the process's main loop is
busy (or blocked on a dead dependency, which is exactly when /health matters).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cryptomon.errors import ConfigError

if TYPE_CHECKING:
    from cryptomon.settings import Settings

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, dict]]
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def allowed_hosts(health_host: str, extra: str = "") -> frozenset[str] | None:
    """The Host header values (without port) the HTTP endpoints answer: loopback names, the address they
    listen on, and CRYPTOMON_HTTP_ALLOWED_HOSTS; None (any host) when that setting is `*`. A page on another
    site that resolves its name to this machine (DNS rebinding) is refused."""
    names = {n.strip().lower() for n in extra.split(",") if n.strip()}
    if "*" in names:
        return None
    if health_host not in ("0.0.0.0", "::"):
        names.add(health_host.lower())
    return frozenset(names | LOOPBACK_NAMES)


def host_guard(allowed: frozenset[str] | None):
    """aiohttp middleware: 421 Misdirected Request for a Host header that is not allowed."""

    @web.middleware
    async def guard(request: web.Request, handler):
        if allowed is not None:
            host = (request.host or "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in allowed:
                return web.Response(status=421, text="unknown host (set CRYPTOMON_HTTP_ALLOWED_HOSTS)\n")
        return await handler(request)

    return guard


def health_server(settings: Settings, port: int, health: HealthFn, registry: CollectorRegistry) -> HealthServer | None:
    """A process's `/health` and `/metrics` on `port` of CRYPTOMON_HEALTH_HOST, answering the hosts allowed
    (CRYPTOMON_HTTP_ALLOWED_HOSTS); None when the port is 0. Not started yet."""
    if not port:
        return None
    hosts = allowed_hosts(settings.health_host, settings.http_allowed_hosts)
    return HealthServer(settings.health_host, port, health, registry, hosts)


class HealthServer:
    """`/health` and `/metrics` of a process, served from a thread of their own."""

    def __init__(
        self,
        host: str,
        port: int,
        health: HealthFn,
        registry: CollectorRegistry,
        allowed: frozenset[str] | None = LOOPBACK_NAMES,
    ):
        self.host, self.port = host, port
        self.allowed = allowed
        self._health = health
        self._registry = registry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def _health_handler(self, request: web.Request) -> web.Response:
        try:
            ok, body = self._health()
        except Exception as exc:
            ok, body = False, {"error": repr(exc)}
        body = {"status": "ok" if ok else "unhealthy", **body}
        return web.Response(
            body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
            status=200 if ok else 503,
            content_type="application/json",
        )

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def start(self) -> HealthServer:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(middlewares=[host_guard(self.allowed)])
            app.router.add_get("/health", self._health_handler)
            app.router.add_get("/metrics", self._metrics_handler)
            runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"health:{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise ConfigError(f"cannot serve health on {self.host}:{self.port}: {self._error}")
        log.info("health on http://%s:%d/health, metrics on /metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
