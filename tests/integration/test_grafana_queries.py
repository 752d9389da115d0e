"""Every dashboard panel query and alert query, macros expanded as Grafana expands them, run against the
real TimescaleDB filled by a scripted scenario through the real worker and Spark job."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from cryptomon.book.metrics import Window
from cryptomon.book.store import BookStore
from cryptomon.dashboards.definitions import ALERT_RULES, DASHBOARDS
from cryptomon.dashboards.macros import expand
from tests.helpers import risk_scenario
from tests.integration.test_spark import MINUTE, load_raw, new_symbols, produce, run_spark_available_now

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scenario(stack, tmp_path_factory):
    risky, calm = new_symbols("GR", 1), new_symbols("GC", 1)
    base = (int(time.time() * 1000) // MINUTE - 40) * MINUTE
    events = risk_scenario(risky, calm, base)
    produce(stack.kafka_bootstrap, events)
    load_raw(stack, events, risky + calm)
    run_spark_available_now(stack, tmp_path_factory.mktemp("ckpt"))
    start = datetime.fromtimestamp(base / 1000, UTC)
    write_book_windows(stack.pg_dsn, risky[0], calm[0], base)
    return {"risky": risky[0], "calm": calm[0], "start": start, "end": start + timedelta(minutes=17)}


LIQUIDITY_DROP_AT = 14 * MINUTE  # the risky symbol's book thins out in one window, 14 minutes in


def write_book_windows(dsn: str, risky: str, calm: str, base: int) -> None:
    """17 minutes of book_metrics windows for both symbols, through the book stage's store."""
    windows = []
    for sym in (risky, calm):
        for i, start in enumerate(range(base, base + 17 * MINUTE, 30_000)):
            w = Window(sym, start, last_update_id=1000 + i, samples=30, mid=Decimal(100), microprice=Decimal(100),
                       spread_sum=Decimal("0.3"), spread_bps_sum=Decimal(30), spread_max=Decimal("0.02"),
                       depth_10bps_samples=30, bid_10bps_sum=Decimal(30_000), ask_10bps_sum=Decimal(27_000),
                       imbalance_10bps_sum=Decimal("1.5"), checks=300)  # fmt: skip
            w.liquidity_drop = sym == risky and start == base + LIQUIDITY_DROP_AT
            windows.append(w)
    store = BookStore(dsn, "test-grafana")
    try:
        store.write([], [], None, windows)
    finally:
        store.close()


def run(dsn, sql):
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql)
        return [d.name for d in cur.description], cur.fetchall()


@pytest.mark.parametrize(
    "panel", [(d, p) for d in DASHBOARDS for p in d.panels], ids=lambda dp: f"{dp[0].uid}:{dp[1].key}"
)
def test_every_panel_query_returns_its_columns_with_data(stack, scenario, panel):
    _, p = panel
    sql = expand(p.sql, scenario["start"], scenario["end"], {"symbol": [scenario["risky"], scenario["calm"]]})
    columns, rows = run(stack.pg_dsn, sql)
    assert tuple(columns) == p.columns
    assert rows, f"{p.title}: no rows"
    if p.format == "time_series":
        assert all(isinstance(r[0], datetime) for r in rows) and [r[0] for r in rows] == sorted(r[0] for r in rows)
    if p.type == "stat":
        assert rows[0][0] >= 1  # the risky symbol raised each kind of flag once


def test_risk_panels_count_exactly_the_scenario_flags(stack, scenario):
    """Repeating the panel for the calm symbol alone (as the repeated row does) shows no flag."""
    by_key = {p.key: p for d in DASHBOARDS for p in d.panels}
    for key in ("volatility_alerts", "volume_spikes", "spread_warnings", "liquidity_drops"):
        counts = {}
        for sym in ("risky", "calm"):
            sql = expand(by_key[key].sql, scenario["start"], scenario["end"], {"symbol": [scenario[sym]]})
            counts[sym] = run(stack.pg_dsn, sql)[1][0][0]
        assert counts == {"risky": 1, "calm": 0}, key
    sql = expand(by_key["anomalies"].sql, scenario["start"], scenario["end"], {"symbol": [scenario["risky"]]})
    events = sorted(r[2] for r in run(stack.pg_dsn, sql)[1])
    assert events == ["volatility", "volume spike"]


def evaluate(stack, rule, at: datetime) -> dict[str, float]:
    """The alert query over its relative time range ending at `at`: {symbol: value}; fires when > 0."""
    sql = expand(rule.sql, at - timedelta(seconds=rule.lookback_seconds), at)
    columns, rows = run(stack.pg_dsn, sql)
    assert columns == ["symbol", "value"]
    return {r[0]: r[1] for r in rows}


def test_alert_queries_fire_on_the_scenario_and_not_on_calm(stack, scenario):
    volatility, spread, liquidity = ALERT_RULES
    t = scenario["start"]
    fired = evaluate(stack, liquidity, t + timedelta(milliseconds=LIQUIDITY_DROP_AT + 45_000))
    assert fired[scenario["risky"]] > 0 and fired[scenario["calm"]] == 0
    burst_end = t + timedelta(minutes=12, seconds=30)
    blowout_end = t + timedelta(minutes=15, seconds=45)
    fired = evaluate(stack, volatility, burst_end)
    assert fired[scenario["risky"]] > 0 and fired[scenario["calm"]] == 0
    fired = evaluate(stack, spread, blowout_end)
    assert fired[scenario["risky"]] > 0 and fired[scenario["calm"]] == 0
    # at a calm moment of the same run, neither fires for either symbol
    calm_time = t + timedelta(minutes=6)
    for rule in ALERT_RULES:
        values = evaluate(stack, rule, calm_time)
        assert values[scenario["risky"]] == 0 and values[scenario["calm"]] == 0
