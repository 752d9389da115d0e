"""The Spark job against real Kafka, TimescaleDB and Spark: metrics equal the SQL oracle recomputed from
the raw rows, flags fire exactly where a scenario puts them, restarts, replays, duplicates and late events
change nothing but what they should."""

from __future__ import annotations

import math
import re
import signal
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest

from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.simulator.scripted import Span, scripted_events
from cryptomon.spark import metrics
from tests.helpers import FUTURE_SKEW, Proc, env_for, producer, risk_scenario, running, wait_for
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
    # The topics are shared by the whole test session: a job reads up to 50M records a batch, so that a
    # backlog is one batch (what each partition has counted is in metric_offsets, shared too).
    return env_for(
        stack,
        CRYPTOMON_SPARK_CHECKPOINT_DIR=checkpoints,
        CRYPTOMON_SPARK_UI_PORT=0,
        CRYPTOMON_SPARK_SHUFFLE_PARTITIONS=2,
        CRYPTOMON_SPARK_MAX_OFFSETS_PER_TRIGGER=50_000_000,
        CRYPTOMON_SPARK_WARMUP_RECORDS=20_000,  # the warm-up's paths, not its JIT: each job start is a test's time
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


def load_raw(stack, events, symbols, **extra) -> None:
    """Fill trades/book_ticker through the real worker."""
    n_trades = sum(1 for k, _ in events if k != "bookTicker")
    n_books = len(events) - n_trades
    env, _ = worker_env(stack, **extra)
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
    oracle = fetch(stack.pg_dsn, metrics.TRADE_ORACLE, {"symbols": list(symbols), "k": 3.0, "n": 10, "m": 3})
    assert len(trade) == len(oracle) > 0
    for got, want in zip(trade, oracle, strict=True):
        sym, ws, vwap, sd, n, vol, alert, spike = got
        wsym, wws, wvwap, wsd, wn, wvol, wspike = want
        assert (sym, ws, n, vol) == (wsym, wws, wn, wvol), (got, want)
        assert vwap == wvwap  # exact: both are sum(p*q)/sum(q) in NUMERIC, rounded to 20 places
        assert (sd is None and wsd is None) or math.isclose(sd, wsd, rel_tol=1e-9, abs_tol=1e-12), (sd, wsd)
        assert alert == (wsd is not None and wsd > threshold), (got, want)
        assert spike == wspike, (got, want)
    spread = fetch(
        stack.pg_dsn,
        "SELECT symbol, window_start, avg_spread, max_spread, min_spread, update_count,"
        " spread_warning FROM spread_metrics WHERE symbol = ANY(%s) ORDER BY 1, 2",
        (list(symbols),),
    )
    spread_oracle = fetch(stack.pg_dsn, metrics.SPREAD_ORACLE, {"symbols": list(symbols), "f": 3.0})
    assert spread == spread_oracle and len(spread) > 0
    return trade, spread


def wait_metrics_match_oracle(stack, symbols, timeout: float = 180.0, what: str = "metrics equal to the oracle"):
    """Wait until the metric tables equal the SQL oracle (a running job may still be catching up)."""

    last = ""

    def matches():
        nonlocal last
        try:
            assert_metrics_match_oracle(stack, symbols)
            return True
        except AssertionError as exc:
            last = str(exc)[:2000]
            return False

    try:
        wait_for(matches, timeout, interval=1.0, what=what)
    except BaseException:
        print(f"last difference: {last}")  # in the failure's captured output
        raise


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
    # the job reads only what this test produces: the shared topics hold other tests' records, and with the
    # skew this test needs one of them (the hostile-input test's "plausible future", an hour ahead) is a valid
    # trade whose time would move the watermark past these events, so Spark would drop them as late
    start = (int(time.time() * 1000) // MINUTE + 5) * MINUTE
    events = scripted_events(symbols, start, [Span(480)], steps_per_second=2.0, seed=8)
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    ckpt = tmp_path / "ckpt"
    env = spark_env(stack, ckpt, CRYPTOMON_SPARK_TRIGGER_SECONDS=1,
                    CRYPTOMON_SPARK_STARTING_OFFSETS=end_offsets(stack.kafka_bootstrap), **FUTURE_SKEW)  # fmt: skip
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
    load_raw(stack, events, symbols, **FUTURE_SKEW)
    with running("spark-restarted", ["spark"], env) as restarted:
        wait_metrics_match_oracle(stack, symbols, what="metrics to equal the oracle after the restart")
    assert "Traceback" not in restarted.log()


def test_late_trades_merge_into_their_window_and_duplicates_count_once(stack, tmp_path):
    """Trades half an hour late (ids the window never had) reach their window in the next batch; the same
    trades produced again (another Kafka offset, as an ingestion restarted mid-send would) change nothing."""
    symbols = new_symbols("LT", 1)
    start = (int(time.time() * 1000) // MINUTE - 30) * MINUTE
    on_time = scripted_events(symbols, start, [Span(180)], steps_per_second=1.0, seed=9)
    produce(stack.kafka_bootstrap, on_time)
    ckpt = tmp_path / "ckpt"
    run_spark_available_now(stack, ckpt)
    late_trades = [dict(p, t=p["t"] + 10_000_000, T=start + 5_000) for k, p in on_time[:40] if k == "trade"]
    again = [e for e in on_time if e[0] == "trade"][:25]
    produce(stack.kafka_bootstrap, [("trade", p) for p in late_trades] + again)
    log = run_spark_available_now(stack, ckpt)
    assert "Traceback" not in log and "summed on the driver" in log  # the repeated ids: counted before
    first_minute = fetch(
        stack.pg_dsn,
        "SELECT trade_count FROM trade_metrics WHERE symbol = %s ORDER BY window_start LIMIT 1",
        (symbols[0],),
    )[0][0]
    on_time_first = sum(1 for k, p in on_time if k == "trade" and p["T"] < start + MINUTE)
    assert first_minute == on_time_first + len(late_trades) > on_time_first
    load_raw(stack, on_time + [("trade", p) for p in late_trades], symbols)
    assert_metrics_match_oracle(stack, symbols)


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
        conn.execute(metrics.VOLUME_SPIKE_UPDATE, {"k": 3.0, "n": 10, "m": 3, "symbols": [sym], "since": "2026-01-01"})
        got = [
            r[0]
            for r in conn.execute(
                "SELECT volume_spike FROM trade_metrics WHERE symbol = %s ORDER BY window_start", (sym,)
            )
        ]
    assert got == [False, False, False, False, True, False, True]


# ---------------------------------------------------------------- every Binance value, poison, late rows


def trade(sym: str, tid: int, p: str, q: str, t_ms: int, ingested_ms: int | None = None, **extra) -> dict:
    return {"e": "trade", "E": t_ms, "s": sym, "t": tid, "p": p, "q": q, "T": t_ms, "m": tid % 2 == 0,
            "ingestion_timestamp": ingested_ms or t_ms + 5, **extra}  # fmt: skip


def windows_from_inputs(trades: list[dict]) -> dict[tuple[str, datetime], tuple[int, Decimal, Decimal]]:
    """The oracle, independent of the job and of the database: per (symbol, minute) count, volume and VWAP
    in Python's Decimal from the payloads as produced."""
    acc: dict = {}
    for d in trades:
        key = (d["s"], datetime.fromtimestamp(d["T"] // MINUTE * 60, UTC))
        n, v, pv = acc.get(key, (0, Decimal(0), Decimal(0)))
        acc[key] = (n + 1, v + Decimal(d["q"]), pv + Decimal(d["p"]) * Decimal(d["q"]))
    return {k: (n, v, pv / v) for k, (n, v, pv) in acc.items()}


def assert_windows(stack, symbols, want, since: datetime | None = None) -> None:
    got = fetch(stack.pg_dsn, "SELECT symbol, window_start, trade_count, volume, vwap FROM trade_metrics "
                "WHERE symbol = ANY(%s) AND window_start >= %s", (list(symbols), since or datetime(1970, 1, 1, tzinfo=UTC)))  # fmt: skip
    assert {(s, w) for s, w, *_ in got} == set(want)
    for sym, ws, n, vol, vwap in got:
        wn, wvol, wvwap = want[(sym, ws)]
        assert (n, vol) == (wn, wvol), (sym, ws)
        assert abs(vwap - wvwap) <= wvwap * Decimal("1e-9"), (sym, ws, vwap, wvwap)


def test_a_memecoin_and_bitcoin_together_give_exact_raw_rows_and_windows(stack, tmp_path):
    """PEPE-like (price 0.00000812, up to 99,999,999,999.99999999 units a trade), BTC-like and a price of
    9,999,999.99999999: Binance's extremes in one job, where DECIMAL(18,8) failed the whole query."""
    pepe, btc, high = new_symbols("PE", 3)
    start = (int(time.time() * 1000) // MINUTE - 40) * MINUTE
    trades = []
    for i in range(180):  # three minutes, one trade per second per symbol
        t = start + i * 1000
        pepe_q = ["92233720368.00000000", "99999999999.99999999", "85090616019.00000000", "1000000.00000000"][i % 4]
        trades += [
            trade(pepe, i, f"0.0000{810 + i % 7:03d}", pepe_q, t),
            trade(btc, i, f"97{i % 10:03d}.{i:08d}", f"0.{i + 1:08d}", t),
            trade(high, i, "9999999.99999999" if i % 2 else "0.00000001", f"{i + 1}.00000001", t),
        ]
    books = [
        {"u": i, "s": pepe, "b": "0.00000811", "B": "99999999999.99999999", "a": "0.00000812", "A": "1.0",
         "ingestion_timestamp": start + i * 1000}
        for i in range(180)
    ]  # fmt: skip
    produce(stack.kafka_bootstrap, [("trade", d) for d in trades] + [("bookTicker", b) for b in books])
    env, _ = worker_env(stack)
    with running("worker-for-spark", ["worker"], env):
        wait_for(lambda: counts(stack.pg_dsn, (pepe, btc, high)) == (len(trades), len(books)), 120, what="raw rows")
    raw = fetch(stack.pg_dsn, "SELECT symbol, trade_id, price, quantity FROM trades WHERE symbol = ANY(%s)",
                ([pepe, btc, high],))  # fmt: skip
    assert sorted(raw) == sorted((d["s"], d["t"], Decimal(d["p"]), Decimal(d["q"])) for d in trades)
    log = run_spark_available_now(stack, tmp_path / "ckpt")
    assert "NUMERIC_VALUE_OUT_OF_RANGE" not in log and "Traceback" not in log
    assert_windows(stack, (pepe, btc, high), windows_from_inputs(trades))
    spread = fetch(stack.pg_dsn, "SELECT sum(update_count), min(min_spread), max(max_spread) FROM spread_metrics "
                   "WHERE symbol = %s", (pepe,))  # fmt: skip
    assert spread == [(180, Decimal("0.00000001"), Decimal("0.00000001"))]


def end_offsets(bootstrap: str) -> str:
    """Spark's startingOffsets JSON for where both topics end now: a job started with it reads exactly what
    is produced afterwards (the shared topics hold other tests' events, whose times would move the
    watermark)."""
    from confluent_kafka import Consumer, TopicPartition

    from cryptomon.kafka.clients import consumer_config

    c = Consumer(consumer_config(bootstrap))
    try:
        out = {}
        for topic in (topic_name(TRADES), topic_name(BOOK_TICKER)):
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            out[topic] = {str(p): c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        return orjson.dumps(out).decode()
    finally:
        c.close()


def streaming_job(stack, tmp_path, name: str, **extra) -> Proc:
    env = spark_env(stack, tmp_path / "ckpt", CRYPTOMON_SPARK_TRIGGER_SECONDS=1,
                    CRYPTOMON_SPARK_STARTING_OFFSETS=end_offsets(stack.kafka_bootstrap), **extra)  # fmt: skip
    return Proc(name, ["spark"], env)


def dead_letters_of(stack, key: str) -> list[tuple]:
    return fetch(stack.pg_dsn, "SELECT topic, kafka_offset, error FROM dead_letters WHERE kafka_key = %s "
                 "ORDER BY kafka_offset", (key.encode(),))  # fmt: skip


def test_poison_records_go_to_dead_letters_and_the_queries_go_on(stack, tmp_path):
    good, bad = new_symbols("PO", 2)
    start = (int(time.time() * 1000) // MINUTE - 3) * MINUTE
    events = scripted_events((good,), start, [Span(150)], steps_per_second=2.0, seed=4)
    poison = [
        trade(bad, 1, "1.5", "1e30", start + 1000),  # a quantity no DECIMAL(20,8) holds
        trade(bad, 2, "abc", "1.0", start + 2000),  # not a number
        {"e": "trade", "s": bad, "t": "x", "p": "1", "q": "1", "T": start},  # a mistyped id
    ]
    job = streaming_job(stack, tmp_path, "spark-poison")
    try:
        half = len(events) // 2
        produce(stack.kafka_bootstrap, events[:half] + [("trade", d) for d in poison] + events[half:])
        wait_for(lambda: len(dead_letters_of(stack, bad)) == 3, 120, interval=1.0, what="three dead letters")
        assert all(e.startswith("spark: ") for _, _, e in dead_letters_of(stack, bad))
        load_raw(stack, events, (good,))
        wait_metrics_match_oracle(stack, (good,), 120)
        assert job.alive()
        assert len(dead_letters_of(stack, bad)) == 3  # the worker rejected them too: still one row each
        counted = fetch(stack.pg_dsn, "SELECT sum(dead_letters) FROM stream_progress WHERE query = 'poison_records' "
                        "AND batch_timestamp > now() - interval '10 minutes'", ())[0][0]  # fmt: skip
        assert counted >= 3
    finally:
        job.stop()
    assert "Traceback" not in job.log()


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


def test_records_older_than_an_archive_horizon_are_set_aside_not_merged(stack, tmp_path):
    """With the raw tables' and metric tables' horizons published (as `cryptomon retention` does), a trade
    or a bookTicker of archived times (a hostile writer, a backfill days late) is a dead letter: no metric
    window before a horizon is written (it could re-create an archived chunk) and none counts a trade
    whose raw row the worker set aside. A horizon moving during a batch makes the write compute again."""
    from cryptomon.spark.queries import NO_CUTS, Cuts
    from cryptomon.spark.writer import HorizonMoved, MetricsWriter

    sym = new_symbols("HZ", 1)[0]
    now = int(time.time() * 1000)
    published = {"trades": "2019-01-01T00:00:00", "trade_metrics": "2020-01-01T00:00:30",
                 "book_ticker": "2022-01-01T00:00:00"}  # fmt: skip
    trades = [
        trade(sym, 1, "10", "1", ms("2018-06-01T00:00:00"), now),  # before both horizons
        trade(sym, 2, "10", "1", ms("2019-06-01T00:00:00"), now),  # its raw row kept, its window archived
        trade(sym, 3, "10", "1", ms("2020-01-01T00:00:45"), now),  # after the horizon, in a window before it
        trade(sym, 4, "10", "2", ms("2020-01-01T00:01:05"), now),
        trade(sym, 5, "10", "3", ms("2021-06-01T00:00:00"), now),
    ]
    books = [{"u": 1, "s": sym, "b": "1.0", "a": "1.5", "ingestion_timestamp": ms("2021-06-01T00:00:00")},
             {"u": 2, "s": sym, "b": "1.0", "a": "1.5", "ingestion_timestamp": now}]  # fmt: skip
    with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
        for table, at in published.items():
            conn.execute("INSERT INTO archive_horizon (table_name, horizon) VALUES (%s, %s::timestamp AT TIME ZONE "
                         "'UTC') ON CONFLICT (table_name) DO UPDATE SET horizon = EXCLUDED.horizon", (table, at))  # fmt: skip
        try:
            job = streaming_job(stack, tmp_path, "spark-horizon")
            try:
                produce(stack.kafka_bootstrap, [("trade", t) for t in trades] + [("bookTicker", b) for b in books])
                wait_for(lambda: len(dead_letters_of(stack, sym)) == 4, 120, interval=1.0, what="four dead letters")
                wait_for(lambda: fetch(stack.pg_dsn, "SELECT count(*) FROM spread_metrics WHERE symbol = %s",
                                       (sym,))[0][0] == 1, 60, what="the recent spread window")  # fmt: skip
                assert job.alive()
            finally:
                job.stop()
            assert "Traceback" not in job.log()
            dead = dead_letters_of(stack, sym)
            assert all(e.startswith("spark: before_archive_horizon") for _, _, e in dead), dead
            assert sorted(t for t, _, _ in dead) == [topic_name(BOOK_TICKER)] + [topic_name(TRADES)] * 3
            windows = fetch(stack.pg_dsn, "SELECT window_start, trade_count, volume FROM trade_metrics WHERE symbol = %s "
                            "ORDER BY 1", (sym,))  # fmt: skip
            assert windows == [(datetime(2020, 1, 1, 0, 1, tzinfo=UTC), 1, Decimal(2)),
                               (datetime(2021, 6, 1, tzinfo=UTC), 1, Decimal(3))]  # fmt: skip

            writer = MetricsWriter(stack)
            try:
                start, cuts = writer.offsets()
                assert cuts == Cuts(ms("2020-01-01T00:01:00"), ms("2022-01-01T00:00:00"))
                with pytest.raises(HorizonMoved):  # a batch begun before these horizons were published
                    writer.in_transaction(lambda c: writer._merge(c, 0, start, NO_CUTS, [], [], [], []))
            finally:
                writer.stopping.set()
        finally:  # the other tests on the test server publish none
            conn.execute("DELETE FROM archive_horizon WHERE table_name = ANY(%s)", (list(published),))


def test_trades_backfilled_after_their_window_closed_reach_it_within_30_s(stack, tmp_path):
    """Two runs of five trades of the first minute are held back and arrive, backfilled, 2 minutes after
    that window closed: the next micro-batch merges them into it (and the volume-spike flags after it are recomputed)."""
    sym = new_symbols("RP", 1)[0]
    start = (int(time.time() * 1000) // MINUTE - 4) * MINUTE
    events = scripted_events((sym,), start, [Span(230)], steps_per_second=2.0, seed=5)
    first_minute = [i for i, (k, d) in enumerate(events) if k == "trade" and d["T"] < start + MINUTE]
    held = {first_minute[i] for i in (*range(10, 15), *range(30, 35))}  # two holes in the window
    job = streaming_job(stack, tmp_path, "spark-late")
    env, _ = worker_env(stack)
    try:
        with running("worker-for-late", ["worker"], env):
            produce(stack.kafka_bootstrap, [e for i, e in enumerate(events) if i not in held])
            sent = [e for i, e in enumerate(events) if i not in held]
            wait_for(lambda: counts(stack.pg_dsn, (sym,)) == (sum(1 for k, _ in sent if k != "bookTicker"),
                     sum(1 for k, _ in sent if k == "bookTicker")), 120, what="raw rows")  # fmt: skip
            wait_metrics_match_oracle(stack, (sym,), 120, "the on-time windows")
            late = [("trade", dict(events[i][1], ingestion_timestamp=start + 3 * MINUTE + 1, backfilled=True))
                    for i in sorted(held)]  # fmt: skip
            produce(stack.kafka_bootstrap, late)
            landed = time.monotonic()
            wait_for(lambda: counts(stack.pg_dsn, (sym,))[0] == sum(1 for k, _ in events if k != "bookTicker"), 60,
                     what="the backfilled rows")  # fmt: skip
            wait_metrics_match_oracle(stack, (sym,), 30 - (time.monotonic() - landed), "the late window")
    finally:
        job.stop()
    log = job.log()
    assert "Traceback" not in log
    # the holes and their filling took Spark's sums, the runs of ids found by a second pass (two holes) and
    # from the sums of the ids (the backfilled trades: one hole, the ids counted between them); no trade
    # on the driver
    passes = [
        tuple(map(int, m))
        for m in re.findall(r"(\d+) with runs of ids from their sums, (\d+) symbols' by a second", log)
    ]
    assert any(second for _, second in passes) and any(sums for sums, _ in passes), passes
    assert "summed on the driver" not in log
