"""What the web view shows: the panels of `dashboards/definitions.py`, their SQL expanded exactly as for
Grafana (`dashboards/macros.py`), so both renderers read the same queries. Pure apart from the queries
it is handed a connection for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from cryptomon.dashboards.definitions import DASHBOARDS, Dashboard, Panel
from cryptomon.dashboards.macros import expand
from cryptomon.errors import BadData

RANGES = {"15m": 15, "1h": 60, "6h": 360, "24h": 1440, "7d": 10080}  # the range picker, in minutes


def dashboard_by_uid(uid: str) -> Dashboard | None:
    return next((d for d in DASHBOARDS if d.uid == uid), None)


def time_range(range_key: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    if range_key not in RANGES:
        raise BadData("bad_range", f"unknown range {range_key!r}: one of {', '.join(RANGES)}")
    to = now or datetime.now(UTC)
    return to - timedelta(minutes=RANGES[range_key]), to


def jsonable(value):
    """Database values as the browser wants them: times as epoch milliseconds, numbers as floats."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, Decimal):
        return float(value)
    return value


def sections(dashboard: Dashboard, symbols: list[str]) -> list[tuple[str | None, list[str]]]:
    """The groups of panels a dashboard shows: one per symbol for a repeated dashboard (like Grafana's
    repeated row), else one for all selected symbols. Each: (heading symbol or None, symbols queried)."""
    if dashboard.repeat_by_symbol:
        return [(s, [s]) for s in symbols]
    return [(None, list(symbols))]


def panel_sql(panel: Panel, t_from: datetime, t_to: datetime, symbols: list[str]) -> str:
    return expand(panel.sql, t_from, t_to, {"symbol": symbols})


def payload(conn, dashboard: Dashboard, t_from: datetime, t_to: datetime, symbols: list[str]) -> dict:
    out = []
    for heading, queried in sections(dashboard, symbols):
        panels = []
        for p in dashboard.panels:
            rows = conn.execute(panel_sql(p, t_from, t_to, queried)).fetchall() if queried else []
            panels.append(
                {
                    "key": p.key,
                    "title": p.title,
                    "type": p.type,
                    "unit": p.unit,
                    "width": p.width,
                    "description": p.description,
                    "columns": list(p.columns),
                    "rows": [[jsonable(v) for v in r] for r in rows],
                }
            )
        out.append({"symbol": heading, "panels": panels})
    firing = conn.execute(
        "SELECT rule, symbol, changed_at FROM alert_state WHERE firing AND symbol = ANY(%s) ORDER BY changed_at DESC",
        (symbols,),
    ).fetchall()
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "from": jsonable(t_from),
        "to": jsonable(t_to),
        "symbols": symbols,
        "sections": out,
        "firing": [{"rule": r, "symbol": s, "since": jsonable(t)} for r, s, t in firing],
    }
