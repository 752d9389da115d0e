"""The Spark job against real Kafka, TimescaleDB and Spark: metrics equal the SQL oracle recomputed from
the raw rows, flags fire exactly where a scenario puts them, restarts and late events are handled."""

from __future__ import annotations

import math
import signal
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest

from cryptomon.feed.scripted import Span, scripted_events
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.spark import metrics as M
from tests.conftest import wait_for
from tests.helpers import Proc, env_for, producer, risk_scenario, running
from tests.integration.test_worker import counts, worker_env

pytestmark = pytest.mark.integration
MINUTE = 60_000


def produce(bootstrap: str, events: list[tuple[str, dict]]) -> None:
    p = producer(bootstrap)
    for i, (kind, payload) in enumerate(events):
        p.produce(
            topic_name(BOOK_TICKER) if kind == "bookTicker" else topic_name(TRADES),
            orjson.dumps(payload),
            payload["s"].encode(),
        )
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def new_symbols(prefix: str, n: int = 2) -> tuple[str, ...]:
    tag = uuid.uuid4().hex[:5].upper()
    return tuple(f"{prefix}{tag}{i}USDT" for i in range(n))


def spark_env(stack, checkpoints: Path, **extra) -> dict:
    # The topics are shared by the whole test session and every job here starts from offset 0; the
    # watermark is global over all symbols, so the backlog is read in one batch (a later batch would see
    # a watermark pushed forward by other tests' events).
    return env_for(
        stack,
        CRYPTOMON_SPARK_CHECKPOINT_DIR=checkpoints,
        CRYPTOMON_SPARK_UI_PORT=0,
        CRYPTOMON_SPARK_SHUFFLE_PARTITIONS=2,
        CRYPTOMON_SPARK_MAX_OFFSETS_PER_TRIGGER=50_000_000,
        **extra,
    )


def run_spark_available_now(stack, checkpoints: Path, **extra) -> str:
    proc = Proc("spark", ["spark", "--available-now"], spark_env(stack, checkpoints, **extra))
    try:
        proc.popen.wait(240)
    finally:
        proc.stop()
    assert proc.popen.returncode == 0, proc.log()[-3000:]
    return proc.log()


def load_raw(stack, events, symbols) -> None:
    """Fill trades/book_ticker through the real worker."""
    n_trades = sum(1 for k, _ in events if k != "bookTicker")
    n_books = len(events) - n_trades
    env, _ = worker_env(stack)
    with running("worker-for-spark", ["worker"], env):
        wait_for(lambda: counts(stack.pg_dsn, symbols) == (n_trades, n_books), 120, what="raw rows")


def fetch(dsn: str, sql: str, params) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def assert_metrics_match_oracle(stack, symbols, threshold: float = 2.0) -> tuple[list, list]:
    trade = fetch(
        stack.pg_dsn,
        "SELECT symbol, window_start, vwap, price_stddev, trade_count, volume, volatility_alert,"
        " volume_spike FROM trade_metrics WHERE symbol = ANY(%s) ORDER BY 1, 2",
        (list(symbols),),
    )
    oracle = fetch(stack.pg_dsn, M.TRADE_ORACLE, {"symbols": list(symbols), "k": 3.0, "n": 10, "m": 3})
    assert len(trade) == len(oracle) > 0
    for got, want in zip(trade, oracle, strict=True):
        sym, ws, vwap, sd, n, vol, alert, spike = got
        wsym, wws, wvwap, wsd, wn, wvol, wspike = want
        assert (sym, ws, n, vol) == (wsym, wws, wn, wvol), (got, want)
        assert vwap == wvwap  # exact: both are sum(p*q)/sum(q) in NUMERIC, rounded to 12 places
        assert (sd is None and wsd is None) or math.isclose(sd, wsd, rel_tol=1e-9, abs_tol=1e-12), (sd, wsd)
        assert alert == (wsd is not None and wsd > threshold), (got, want)
        assert spike == wspike, (got, want)
    spread = fetch(
        stack.pg_dsn,
        "SELECT symbol, window_start, avg_spread, max_spread, min_spread, update_count,"
        " spread_warning FROM spread_metrics WHERE symbol = ANY(%s) ORDER BY 1, 2",
        (list(symbols),),
    )
    spread_oracle = fetch(stack.pg_dsn, M.SPREAD_ORACLE, {"symbols": list(symbols), "f": 3.0})
    assert spread == spread_oracle and len(spread) > 0
    return trade, spread


def wait_metrics_match_oracle(stack, symbols, timeout: float = 180.0, what: str = "metrics equal to the oracle"):
    """Wait until the metric tables equal the SQL oracle (a running job may still be catching up)."""

    def matches():
        try:
            assert_metrics_match_oracle(stack, symbols)
            return True
        except AssertionError:
            return False

    wait_for(matches, timeout, interval=1.0, what=what)


def test_metrics_equal_the_sql_oracle_and_a_replay_changes_nothing(stack, tmp_path):
    symbols = new_symbols("OR")
    start = (int(time.time() * 1000) // MINUTE - 8) * MINUTE + 17_000  # windows not aligned with the data
    events = scripted_events(symbols, start, [Span(300)], steps_per_second=2.0, seed=3)
    produce(stack.kafka_bootstrap, events)
    load_raw(stack, events, symbols)
    log = run_spark_available_now(stack, tmp_path / "ckpt")
    assert "Traceback" not in log
    trade, spread = assert_metrics_match_oracle(stack, symbols)
    assert len(trade) == 2 * 6 and len(spread) == 2 * 11  # 300 s from :17 -> 6 minutes, 11 half-minutes
    # aggTrades were not counted: trade_count is the number of `trade` events
    assert sum(r[4] for r in trade) == sum(1 for k, _ in events if k == "trade")
    # a second job from scratch (new checkpoint) replays everything: same rows
    run_spark_available_now(stack, tmp_path / "ckpt2")
    assert assert_metrics_match_oracle(stack, symbols) == (trade, spread)


def test_scenario_flags_fire_exactly_where_expected_and_calm_fires_none(stack, tmp_path):
    risky, calm = new_symbols("RK", 1), new_symbols("CA", 1)
    base = (int(time.time() * 1000) // MINUTE - 20) * MINUTE
    events = risk_scenario(risky, calm, base)
    produce(stack.kafka_bootstrap, events)
    load_raw(stack, events, risky + calm)
    run_spark_available_now(stack, tmp_path / "ckpt")
    trade, spread = assert_metrics_match_oracle(stack, risky + calm)
    minute = lambda i: base // 1000 + 60 * i  # noqa: E731
    alerts = {(r[0], int(r[1].timestamp())) for r in trade if r[6]}
    spikes = {(r[0], int(r[1].timestamp())) for r in trade if r[7]}
    warnings = {(r[0], int(r[1].timestamp())) for r in spread if r[6]}
    sym = risky[0]
    assert alerts == {(sym, minute(11))}
    assert spikes == {(sym, minute(13))}
    assert warnings == {(sym, minute(15))}  # the blow-out fills the second quarter of that minute's first half


def test_job_killed_mid_run_restarts_from_its_checkpoint(stack, tmp_path):
    symbols = new_symbols("KR")
    # later than anything else in the shared topics, so the backlog's watermark cannot drop these events
    start = (int(time.time() * 1000) // MINUTE + 5) * MINUTE
    events = scripted_events(symbols, start, [Span(480)], steps_per_second=2.0, seed=8)
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    ckpt = tmp_path / "ckpt"
    env = spark_env(stack, ckpt, CRYPTOMON_SPARK_TRIGGER_SECONDS=1)
    produce(stack.kafka_bootstrap, first)
    job = Proc("spark-killed", ["spark"], env)
    try:
        wait_for(
            lambda: (
                fetch(stack.pg_dsn, "SELECT count(*) FROM trade_metrics WHERE symbol = ANY(%s)", (list(symbols),))[0][0]
                > 0
            ),
            180,
            what="first metrics",
        )
        produce(stack.kafka_bootstrap, second[: len(second) // 2])
        job.stop(signal.SIGKILL)
    finally:
        job.stop()
    produce(stack.kafka_bootstrap, second[len(second) // 2 :])
    load_raw(stack, events, symbols)
    with running("spark-restarted", ["spark"], env) as restarted:
        wait_metrics_match_oracle(stack, symbols, what="metrics to equal the oracle after the restart")
    assert "Traceback" not in restarted.log()


def test_events_later_than_the_watermark_are_counted_as_dropped(stack, tmp_path):
    symbols = new_symbols("LT", 1)
    start = (int(time.time() * 1000) // MINUTE - 30) * MINUTE
    on_time = scripted_events(symbols, start, [Span(180)], steps_per_second=1.0, seed=9)
    produce(stack.kafka_bootstrap, on_time)
    ckpt = tmp_path / "ckpt"
    run_spark_available_now(stack, ckpt)  # the watermark is now ~start + 180 s - 10 s
    late_trades = [dict(p, t=p["t"] + 10_000_000, T=start + 5_000) for k, p in on_time[:40] if k == "trade"]
    produce(stack.kafka_bootstrap, [("trade", p) for p in late_trades])
    before = fetch(
        stack.pg_dsn, "SELECT coalesce(sum(dropped_late), 0) FROM stream_progress WHERE query = 'trade_metrics'", ()
    )[0][0]
    log = run_spark_available_now(stack, ckpt)
    after = fetch(
        stack.pg_dsn, "SELECT coalesce(sum(dropped_late), 0) FROM stream_progress WHERE query = 'trade_metrics'", ()
    )[0][0]
    assert after - before == len(late_trades) > 0
    assert "later than the watermark were dropped" in log
    first_minute = fetch(
        stack.pg_dsn,
        "SELECT trade_count FROM trade_metrics WHERE symbol = %s ORDER BY window_start LIMIT 1",
        (symbols[0],),
    )[0][0]
    assert first_minute == sum(1 for k, p in on_time if k == "trade" and p["T"] < start + MINUTE)


def test_volume_spike_needs_the_minimum_history_and_k_times_the_mean(stack):
    """The rule as the job applies it, on hand-made windows: no flag before 3 previous windows (a partial
    first window of 1 must not make the next 10 a spike), then volume > 3 x mean(previous <= 10)."""
    sym = new_symbols("VS", 1)[0]
    volumes = [1, 10, 10, 10, 50, 20, 200]
    # mean of the previous windows:  -, 1, 5.5, 7, 7.75, 16.2, 16.83..  -> only 50 (>23.25) and 200 (>50.5) spike
    with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
        for i, v in enumerate(volumes):
            conn.execute(
                "INSERT INTO trade_metrics (symbol, window_start, window_end, vwap, price_stddev, trade_count,"
                " volume, volatility_alert, volume_spike) VALUES (%s, '2026-01-01'::timestamptz + %s * interval"
                " '1 min', '2026-01-01'::timestamptz + (%s + 1) * interval '1 min', 100, 0, 1, %s, false, true)",
                (sym, i, i, v),
            )
        conn.execute(M.VOLUME_SPIKE_UPDATE, {"k": 3.0, "n": 10, "m": 3, "symbols": [sym], "since": "2026-01-01"})
        got = [
            r[0]
            for r in conn.execute(
                "SELECT volume_spike FROM trade_metrics WHERE symbol = %s ORDER BY window_start", (sym,)
            )
        ]
    assert got == [False, False, False, False, True, False, True]
