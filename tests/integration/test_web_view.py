"""`cryptomon dashboard` in headless Chromium (Debian's, driven by Playwright): the charts draw the values
in the database, through the same SQL as the Grafana dashboards; screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.helpers import ARTIFACTS, Proc, env_for, free_port, get_json, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as the machine notes say: no sandbox as root, and no background connections on a closed network
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


GAP = 4


def fill(dsn: str, calm: str, risky: str) -> dict:
    """Ten closed minutes of metrics for two symbols; the risky one has flags."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = [end - timedelta(minutes=10 - i) for i in range(10)]
    expected = {"vwap": {}, "trades": {}, "volatility": 0, "spikes": 0, "spread_warnings": 0}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sym, base in ((calm, 100.0), (risky, 97_000.0)):  # BTC's price: its axis in plain numbers
            expected["vwap"][sym] = [base + i * 1.25 for i in range(10)]
            expected["trades"][sym] = [40 + 3 * i for i in range(10)]
            for i, t in enumerate(minutes):
                vol = sym == risky and i in (3, 7)
                spike = sym == risky and i == 7
                warn = sym == risky and i in (2, 5, 8)
                expected["volatility"] += vol
                expected["spikes"] += spike
                expected["spread_warnings"] += warn
                conn.execute(
                    "INSERT INTO trade_metrics (symbol, window_start, window_end, vwap, price_stddev,"
                    " trade_count, volume, volatility_alert, volume_spike) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    (
                        sym,
                        t,
                        t + timedelta(minutes=1),
                        expected["vwap"][sym][i],
                        0.5 + vol * 4,
                        expected["trades"][sym][i],
                        10 + i,
                        vol,
                        spike,
                    ),
                )
                conn.execute(
                    "INSERT INTO spread_metrics (symbol, window_start, window_end, avg_spread, max_spread,"
                    " min_spread, update_count, spread_warning) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                    (sym, t, t + timedelta(seconds=30), 0.02 + i / 1000, 0.05 + warn * 0.2, 0.01, 60, warn),
                )
        # a window missing: the calm symbol's minute GAP (drawn as a gap, not a line across it)
        conn.execute("DELETE FROM trade_metrics WHERE symbol = %s AND window_start = %s", (calm, minutes[GAP]))
    return expected


def test_the_web_view_draws_the_database_values_in_chromium(stack):
    from playwright.sync_api import sync_playwright

    tag = uuid.uuid4().hex[:5].upper()
    calm, risky = f"WC{tag}USDT", f"WR{tag}USDT"
    expected = fill(stack.pg_dsn, calm, risky)
    port = free_port()
    env = env_for(stack, CRYPTOMON_SYMBOLS=f"{calm},{risky}", CRYPTOMON_DASHBOARD_PORT=port)
    web = Proc("dashboard", ["dashboard"], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get_json(f"{base}/health")[0] == 200, 30, what="the web view")
        assert httpx.get(f"{base}/api/dashboards/cryptomon-risk-monitor?symbols=BTCUSDT'--").status_code == 400
        assert httpx.get(f"{base}/api/dashboards/nope").status_code == 404
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(f"{base}/?range=1h")
                page.wait_for_function(
                    "document.body.dataset.dashboard === 'cryptomon-market-overview'", timeout=30_000
                )
                for sym in (calm, risky):
                    vwap = page.evaluate(f"document.getElementById('panel-{sym}-vwap').data[0].y")
                    want, trades = list(expected["vwap"][sym]), list(expected["trades"][sym])
                    if sym == calm:  # the missing minute is a null point: the line breaks there
                        assert vwap[GAP] is None
                        del vwap[GAP], trades[GAP]
                    assert vwap == pytest.approx([v for i, v in enumerate(want) if sym != calm or i != GAP])
                    bars = page.evaluate(f"document.getElementById('panel-{sym}-trade_count').data[0].y")
                    assert bars == trades
                    # drawn, not only handed to plotly: one SVG path per piece of line (the calm symbol's in
                    # two: before the missing minute and after it), one bar per minute
                    pieces = page.locator(f"#panel-{sym}-vwap .scatterlayer .trace path.js-line").count()
                    assert pieces == (2 if sym == calm else 1)
                    assert page.locator(f"#panel-{sym}-trade_count .barlayer .point").count() == len(trades)
                ticks = page.locator(f"#panel-{risky}-vwap .ytick text").all_text_contents()
                assert ticks and all("k" not in t for t in ticks) and any(t.startswith("97,0") for t in ticks), ticks
                page.screenshot(path=str(ARTIFACTS / "web-market-overview.png"), full_page=True)

                page.get_by_role("button", name="Risk Monitor").click()
                page.wait_for_function("document.body.dataset.dashboard === 'cryptomon-risk-monitor'", timeout=30_000)
                stat = lambda key: page.evaluate(f"document.getElementById('panel-all-{key}').data[0].value")  # noqa: E731
                assert stat("volatility_alerts") == expected["volatility"] == 2
                assert stat("volume_spikes") == expected["spikes"] == 1
                assert stat("spread_warnings") == expected["spread_warnings"] == 3
                shown = page.locator("#panel-all-volatility_alerts text.number").text_content()
                assert shown.strip() == "2"
                anomalies = page.evaluate("JSON.parse(document.getElementById('panel-all-anomalies').dataset.rows)")
                assert [r[1] for r in anomalies] == [risky, risky]
                assert [r[2] for r in anomalies] == ["volatility + volume spike", "volatility"]
                page.screenshot(path=str(ARTIFACTS / "web-risk-monitor.png"), full_page=True)
            finally:
                browser.close()
    finally:
        web.stop()
    for name in ("web-market-overview.png", "web-risk-monitor.png"):
        assert Path(ARTIFACTS / name).stat().st_size > 20_000
    assert "Traceback" not in web.log()
