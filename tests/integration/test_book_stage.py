"""`cryptomon book` on real data: the real BTCUSDT and ETHUSDT captures through feed replay -> ingest
(CRYPTOMON_DEPTH=100ms) -> binance.depth -> cryptomon book -> TimescaleDB, the book stage killed with
kill -9 mid-run and started again. Every row of order_book_snapshots equals the book an independent
reconstruction from the files has after the last diff of that symbol's second, none is missing, every
book_metrics window equals a computation from the files, and the bookTicker check saw no mismatch."""

from __future__ import annotations

import signal
import time
import uuid
from decimal import Decimal

import psycopg
import pytest

from cryptomon.binance.schema import DEPTH_SNAPSHOT
from cryptomon.book.metrics import Window
from cryptomon.book.store import METRIC_COLUMNS
from cryptomon.simulator.replay import first_event_ms, read_captures, shift_to_now
from cryptomon.supervisor import replay_args
from tests.helpers import FUTURE_SKEW, env_for, exchange_env, free_port, real_capture, running, wait_for, wait_json
from tests.unit.test_book_keeper import oracle_rows
from tests.unit.test_book_metrics import WINDOW_MS, as_sums, oracle_samples

pytestmark = pytest.mark.integration
SYMBOLS = ("BTCUSDT", "ETHUSDT")


def stored(dsn: str, since_ms: int) -> dict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT symbol, (extract(epoch FROM snapshot_time) * 1000)::bigint, last_update_id, bid_prices, bid_qtys, "
            "ask_prices, ask_qtys FROM order_book_snapshots WHERE snapshot_time >= to_timestamp(%s / 1000.0) "
            "AND symbol = ANY(%s)", (since_ms, list(SYMBOLS))
        ).fetchall()  # fmt: skip
    out = {}
    for sym, ms, uid, bp, bq, ap, aq in rows:
        assert (sym, ms // 1000) not in out, "two rows for one symbol and second"
        out[(sym, ms // 1000)] = (ms, uid, list(zip(bp, bq, strict=True)), list(zip(ap, aq, strict=True)))
    return out


def stored_windows(dsn: str, since_ms: int) -> list[Window]:
    cols = ", ".join(("(extract(epoch FROM window_start) * 1000)::bigint", *METRIC_COLUMNS[1:]))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT {cols} FROM book_metrics WHERE window_start >= to_timestamp(%s / 1000.0) AND symbol = ANY(%s)",
            (since_ms, list(SYMBOLS)),
        ).fetchall()
    return [Window.from_row(r) for r in rows]


def test_real_books_stored_exactly_through_a_kill_of_the_book_stage(stack):
    captures = [real_capture("btcusdt_20240808.gz"), real_capture("ethusdt_20240808.gz")]
    port, book_port = free_port(), free_port()
    group = f"test-book-{uuid.uuid4().hex[:6]}"
    t0 = time.time_ns() // 1_000_000
    shift = shift_to_now(first_event_ms(captures), t0)
    values = []
    for _, sym, kind, d in read_captures(captures, shift_ms=shift, snapshots=True):
        if kind == DEPTH_SNAPSHOT:
            values.append({"e": DEPTH_SNAPSHOT, "s": sym, **d})
        elif kind.startswith("depth@"):
            values.append(d)
    want = oracle_rows(values)
    last = {s: max(sec for sym, sec in want if sym == s) for s in SYMBOLS}
    env = exchange_env(stack, port, CRYPTOMON_SYMBOLS=",".join(SYMBOLS), CRYPTOMON_DEPTH="100ms", **FUTURE_SKEW)
    book_env = env_for(stack, CRYPTOMON_BOOK_GROUP=group, CRYPTOMON_BOOK_HEALTH_PORT=book_port,
                       CRYPTOMON_BOOK_CHECKPOINT_SECONDS=1, CRYPTOMON_BOOK_START_LOOKBACK_SECONDS=0, **FUTURE_SKEW)  # fmt: skip
    health = f"http://127.0.0.1:{book_port}/health"
    replay = replay_args(captures, port, "--speed", "5", "--shift-minutes", str(shift // 60_000))
    with running("book-first", ["book"], book_env) as first:
        wait_json(health, lambda b: len(b["assigned"]) == 12, 60, "the book stage assigned both topics")
        with running("replay-book", replay, env), running("ingest-book", ["ingest"], env):
            wait_for(lambda: len(stored(stack.pg_dsn, shift)) > 40, 90, 0.5, "rows of the first books")
            wait_json(health, lambda b: b["checkpoints"] >= 2, 30, "a checkpoint with books in it")
            first.stop(signal.SIGKILL)
            with running("book-second", ["book"], book_env) as second:
                wait_json(f"http://127.0.0.1:{port}/sim/stats", lambda b: b["done"], 120, "the replay to finish")

                def complete():
                    got = stored(stack.pg_dsn, shift)
                    return all((s, last[s] - 1) in got for s in SYMBOLS)

                wait_for(complete, 60, 0.5, "the rows up to the last second")
                body = wait_json(health, lambda b: b["books_synced"] == 2, 10, "both books synced")
    assert "books restored" in second.log()
    got = stored(stack.pg_dsn, shift)
    first_second = {s: min(sec for sym, sec in got if sym == s) for s in SYMBOLS}
    expected = {
        k: (ms, uid, [(Decimal(p), Decimal(q)) for p, q in bids], [(Decimal(p), Decimal(q)) for p, q in asks])
        for k, (ms, uid, bids, asks) in want.items()
        if first_second[k[0]] <= k[1] < last[k[0]]
    }
    assert got == expected
    for s in SYMBOLS:  # the books synced within the first seconds of the capture
        assert first_second[s] - min(sec for sym, sec in want if sym == s) <= 2
        assert body["books"][s]["mismatches"] == 0 and body["books"][s]["checks"] > 200
    # book_metrics: every window after the first and before the last equal to the computation from the files
    windows = {(w.symbol, w.start_ms): as_sums(w) for w in stored_windows(stack.pg_dsn, shift)}
    want_windows = {
        k: {f: v for f, v in w.items() if v}
        for k, w in oracle_samples(values).items()
        if k[1] > first_second[k[0]] * 1000 and k[1] + WINDOW_MS <= (last[k[0]] - 1) * 1000
    }
    assert len(want_windows) >= 2 * 9 and {k: windows.get(k) for k in want_windows} == want_windows
