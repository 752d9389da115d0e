"""Real Binance frames (../shared/data/real: BTCUSDT and ETHUSDT spot, 2024-08-08, hftbacktest's
`<ns> <frame>` gzip format) replayed through the whole pipeline: feed replay -> ingestion -> Kafka ->
worker -> TimescaleDB, and -> Spark -> metrics. Every trade and bookTicker is stored once, and every
1-minute window equals a computation from the files themselves."""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from cryptomon.simulator.replay import first_event_ms, read_captures, shift_to_now
from cryptomon.supervisor import replay_args
from tests.helpers import FUTURE_SKEW, exchange_env, free_port, running, wait_for, wait_json
from tests.integration.test_spark import assert_windows, fetch, streaming_job, windows_from_inputs
from tests.integration.test_worker import worker_env

pytestmark = pytest.mark.integration
REAL = Path(os.environ.get("CRYPTOMON_REAL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data" / "real")
FILES = [REAL / "btcusdt_20240808.gz", REAL / "ethusdt_20240808.gz"]


@pytest.fixture(scope="module")
def captures():
    if not all(f.exists() for f in FILES):
        pytest.skip(f"the real captures are not in {REAL} (set CRYPTOMON_REAL_DATA to the folder holding them)")
    return FILES


def test_real_btc_and_eth_frames_through_the_whole_pipeline(stack, tmp_path, captures):
    port = free_port()
    # shifted to now and replayed at full speed, the capture's 6 minutes of event times arrive in seconds
    env = exchange_env(stack, port, CRYPTOMON_SYMBOLS="BTCUSDT,ETHUSDT", **FUTURE_SKEW)
    wenv, _ = worker_env(stack, **FUTURE_SKEW)
    job = streaming_job(stack, tmp_path, "spark-real", **FUTURE_SKEW)
    t0 = datetime.now(UTC)
    shift = shift_to_now(first_event_ms(captures), int(t0.timestamp() * 1000))  # what --shift-to-now does
    try:
        with (
            running("worker-real", ["worker"], wenv),
            running("replay-real", replay_args(captures, port, "--rate", "0",
                                    "--shift-minutes", str(shift // 60_000)), env),
            running("ingest-real", ["ingest"], env),
        ):  # fmt: skip
            trades, books = [], defaultdict(list)
            for _, sym, kind, d in read_captures(captures, shift_ms=shift):
                if kind == "trade":
                    trades.append(d)
                elif kind == "bookTicker":
                    books[sym].append(d["u"])
            wait_json(f"http://127.0.0.1:{port}/sim/stats", lambda b: b["done"], 120, "the replay to finish")

            def stored():  # this run's rows: the tests before replayed the same captures, with other timestamps
                with psycopg.connect(stack.pg_dsn) as conn:
                    t = conn.execute(
                        "SELECT symbol, count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id) FROM trades "
                        "WHERE event_type = 'trade' AND symbol IN ('BTCUSDT', 'ETHUSDT') AND trade_id > 1000000000 "
                        "AND ingestion_ts >= %s GROUP BY 1 ORDER BY 1", (t0,)
                    ).fetchall()  # fmt: skip
                    b = conn.execute(
                        "SELECT symbol, count(*), count(DISTINCT update_id) FROM book_ticker WHERE symbol IN "
                        "('BTCUSDT', 'ETHUSDT') AND update_id > 30000000000 AND ingestion_ts >= %s GROUP BY 1 "
                        "ORDER BY 1", (t0,)
                    ).fetchall()  # fmt: skip
                return t, b

            want_t = [
                (s, n, n, min(d["t"] for d in trades if d["s"] == s), max(d["t"] for d in trades if d["s"] == s))
                for s, n in sorted({s: sum(1 for d in trades if d["s"] == s) for s in ("BTCUSDT", "ETHUSDT")}.items())
            ]
            want_b = [(s, len(u), len(u)) for s, u in sorted(books.items())]
            wait_for(lambda: stored() == (want_t, want_b), 180, interval=1.0, what="every real event in the database")
            assert want_t[0][1:3] == (9757, 9757) and want_b == [("BTCUSDT", 28040, 28040), ("ETHUSDT", 24077, 24077)]

            want = windows_from_inputs(trades)
            last: list = []

            def windows_match():
                try:
                    assert_windows(stack, ("BTCUSDT", "ETHUSDT"), want, t0.replace(second=0, microsecond=0))
                    return True
                except AssertionError as exc:
                    last[:] = [exc]
                    return False

            try:
                wait_for(windows_match, 180, interval=1.0, what="every window equal to the files")
            except BaseException:
                print("last difference:", last, "want:", sorted(want.items()))
                print(
                    "metrics:",
                    fetch(
                        stack.pg_dsn,
                        "SELECT symbol, window_start, trade_count, volume, updated_at "
                        "FROM trade_metrics WHERE symbol = 'BTCUSDT' ORDER BY 2",
                        (),
                    ),
                )
                print(
                    "raw:",
                    fetch(
                        stack.pg_dsn,
                        "SELECT time_bucket('1 minute', event_time), count(*), min(event_time), "
                        "max(event_time), min(ingestion_ts), max(ingestion_ts), min(inserted_at), max(inserted_at) FROM "
                        "trades WHERE symbol = 'BTCUSDT' AND event_type = 'trade' GROUP BY 1 ORDER BY 1",
                        (),
                    ),
                )
                print(
                    "progress:",
                    fetch(
                        stack.pg_dsn,
                        "SELECT query, batch_id, batch_timestamp, input_rows, dead_letters FROM stream_progress "
                        "ORDER BY batch_timestamp DESC LIMIT 60",
                        (),
                    ),
                )
                raise
    finally:
        job.stop()
    assert "Traceback" not in job.log()
