"""The web view's HTTP server (aiohttp): a static page, plotly.js from the installed `plotly` package (so
it works offline), and one JSON endpoint per dashboard that runs the dashboard's queries.

GET /                                   the page
GET /api/dashboards                     the dashboards, ranges and configured symbols
GET /api/dashboards/{uid}?range=1h&symbols=A,B   panels with their rows (symbols: a subset of the configured)
GET /health                             200 when the database answers, 503 otherwise
"""

from __future__ import annotations

import asyncio
import logging
from importlib.resources import files
from pathlib import Path

import orjson
import psycopg
from aiohttp import web

from cryptomon.binance.schema import short_repr
from cryptomon.dashboards.definitions import DASHBOARDS
from cryptomon.errors import BadData
from cryptomon.observability import allowed_hosts, host_guard
from cryptomon.settings import Settings
from cryptomon.web.data import RANGES, dashboard_by_uid, payload, time_range

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def plotly_js() -> Path:
    return Path(str(files("plotly") / "package_data" / "plotly.min.js"))


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def make_app(settings: Settings) -> web.Application:
    symbols = list(settings.symbols)

    def query(work):
        """Run `work(conn)` on a fresh connection in a worker thread (a refresh is a handful of short queries)."""

        def run():
            with psycopg.connect(
                settings.pg_dsn, connect_timeout=5, autocommit=True, application_name="cryptomon-dashboard"
            ) as conn:
                return work(conn)

        return asyncio.to_thread(run)

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def dashboards(_: web.Request) -> web.Response:
        return _json(
            {
                "dashboards": [{"uid": d.uid, "title": d.title} for d in DASHBOARDS],
                "ranges": list(RANGES),
                "symbols": symbols,
            }
        )

    async def dashboard(request: web.Request) -> web.Response:
        d = dashboard_by_uid(request.match_info["uid"])
        if d is None:
            return _json({"error": f"no dashboard {request.match_info['uid']!r}"}, 404)
        asked = request.query.get("symbols", ",".join(symbols)).split(",")
        wanted = list(dict.fromkeys(s.strip().upper() for s in asked if s.strip()))  # each symbol once
        unknown = [short_repr(s, 24) for s in wanted if s not in symbols][:10]
        if unknown:  # only configured symbols reach the SQL
            return _json({"error": f"unknown symbols {unknown}: configured are {symbols}"}, 400)
        try:
            t_from, t_to = time_range(request.query.get("range", "1h"))
        except BadData as exc:
            return _json({"error": exc.detail}, 400)
        try:
            body = await query(lambda conn: payload(conn, d, t_from, t_to, wanted))
        except psycopg.Error as exc:
            log.error("dashboard %s: database error: %s", d.uid, exc)
            return _json({"error": f"database unavailable: {exc.__class__.__name__}"}, 503)
        return _json(body)

    async def health(_: web.Request) -> web.Response:
        try:
            await query(lambda conn: conn.execute("SELECT 1"))
        except psycopg.Error as exc:
            return _json({"status": "unhealthy", "database": str(exc).strip()}, 503)
        return _json({"status": "ok"})

    app = web.Application(middlewares=[host_guard(allowed_hosts(settings.health_host, settings.http_allowed_hosts))])
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/api/dashboards", dashboards)
    app.router.add_get("/api/dashboards/{uid}", dashboard)
    app.router.add_static("/static", STATIC)

    async def plotly(_: web.Request) -> web.FileResponse:
        return web.FileResponse(plotly_js())

    app.router.add_get("/vendor/plotly.min.js", plotly)
    return app


def main(settings: Settings, port: int | None = None) -> None:
    port = settings.dashboard_port if port is None else port
    log.info("web view on http://%s:%d/", settings.health_host, port)
    web.run_app(
        make_app(settings), host=settings.health_host, port=port, access_log=None, print=None, handle_signals=True
    )
