"""Retention against the real TimescaleDB, in a database of its own (chunks of a minute): old chunks archived,
verified and dropped, newer ones untouched, the worker setting aside what is older than the horizon, and a
kill -9 in the middle of an archive leaving no half file and dropping nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from decimal import Decimal

import psycopg
import pyarrow.parquet as pq
import pytest

from cryptomon.db.horizons import BEFORE_HORIZON
from cryptomon.db.migrate import migrate
from cryptomon.retention import archive, policy
from cryptomon.retention.loop import CHUNKS_SQL, PASS_LOCK, Retention
from cryptomon.services.local import TimescaleDB
from cryptomon.worker.rows import DeadLetter, TradeRow
from cryptomon.worker.sink import TimescaleSink
from tests.helpers import env_for, wait_for

pytestmark = pytest.mark.integration

TRADE_KEY = "trade_id, event_type, symbol, price, quantity, is_buyer_maker, backfilled, event_time, ingestion_ts"


@pytest.fixture()
def own_db(stack, tmp_path):
    """Settings for a fresh database of the test server, migrated, whose raw tables get chunks of a minute."""
    name = f"retention_{uuid.uuid4().hex[:8]}"
    dsn = stack.pg_dsn.rsplit("/", 1)[0] + "/" + name
    settings = stack.model_copy(update={"pg_dsn": dsn, "archive_dir": tmp_path / "archive"})
    TimescaleDB(settings).bootstrap()
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("trades", "book_ticker"):
            conn.execute("SELECT set_chunk_time_interval(%s, INTERVAL '1 minute')", (table,))
    yield settings
    with psycopg.connect(stack.pg_dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def insert_trades(conn, seconds: int, per_second: int = 1, first_id: int = 1, ago: int = 0) -> None:
    """Trades from `seconds` + `ago` seconds ago up to `ago` seconds ago, with decimals at both ends of
    NUMERIC(20, 8)."""
    conn.execute(
        "INSERT INTO trades (event_time, symbol, event_type, trade_id, price, quantity, is_buyer_maker, ingestion_ts) "
        "SELECT now() - (%(ago)s + g::numeric / %(per)s) * interval '1 second', 'BTCUSDT', "
        "CASE WHEN g %% 3 = 0 THEN 'aggTrade' ELSE 'trade' END, %(first)s + g, "
        "CASE WHEN g %% 7 = 0 THEN 999999999999.99999999 ELSE 97000 + g * 0.00000001 END, "
        "CASE WHEN g %% 5 = 0 THEN 0.00000001 ELSE g * 0.001 END, g %% 2 = 0, now() "
        "FROM generate_series(0, %(n)s - 1) g",
        {"ago": ago, "per": per_second, "first": first_id, "n": seconds * per_second},
    )


def chunk_names(conn, table: str) -> set[str]:
    q = "SELECT chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = %s"
    return {r[0] for r in conn.execute(q, (table,))}


def age_horizons(conn, seconds: int = 600) -> None:
    """As if the horizons had been published `seconds` earlier (instead of waiting out the hold)."""
    conn.execute("UPDATE archive_horizon SET published_at = published_at - %s * interval '1 second'", (seconds,))


def archived_rows(root, table: str, columns: list[str]) -> list[tuple]:
    rows = []
    for path in archive.files(root):
        if path.parts[-3] == table:
            t = pq.read_table(path, columns=columns)
            rows += list(zip(*(t.column(c).to_pylist() for c in columns), strict=True))
    return sorted(rows)


def test_old_chunks_are_archived_exactly_and_dropped_newer_ones_untouched(own_db):
    settings = own_db.model_copy(update={"retention_trades": 300, "retention_book_ticker": 300})
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        insert_trades(conn, 12 * 60)
        conn.execute(
            "INSERT INTO book_ticker (ingestion_ts, symbol, update_id, best_bid_price, best_bid_qty, best_ask_price, "
            "best_ask_qty) SELECT now() - g * interval '1 second', 'ETHUSDT', g, 3000.01, 1.5, 3000.02, 0.00000001 "
            "FROM generate_series(0, 599) g"
        )
        before = {t: chunk_names(conn, t) for t in ("trades", "book_ticker")}
        retention = Retention(settings)
        first = retention.run_once()
        assert all(not done["dropped"] for done in first["tables"].values())  # horizons published, nothing dropped
        horizon = conn.execute("SELECT horizon FROM archive_horizon WHERE table_name = 'trades'").fetchone()[0]
        now = conn.execute("SELECT now()").fetchone()[0]
        assert horizon.second == 0 and 300 <= (now - horizon).total_seconds() < 360  # a chunk boundary, 5-6 min back
        old = conn.execute(f"SELECT {TRADE_KEY} FROM trades WHERE event_time < %s ORDER BY 1", (horizon,)).fetchall()
        newer = conn.execute(f"SELECT {TRADE_KEY} FROM trades WHERE event_time >= %s ORDER BY 1", (horizon,)).fetchall()
        assert len(old) > 6 * 60 and len(newer) >= 5 * 60
        newer_chunks = {
            r[0]
            for r in conn.execute(
                "SELECT chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = 'trades' "
                "AND range_end > %s",
                (horizon,),
            )
        }

        age_horizons(conn)
        second = retention.run_once()
        dropped = {d["chunk"] for d in second["tables"]["trades"]["dropped"]}
        assert dropped == before["trades"] - newer_chunks and len(dropped) >= 6
        assert chunk_names(conn, "trades") == newer_chunks  # the newer chunks untouched ...
        after = conn.execute(f"SELECT {TRADE_KEY} FROM trades ORDER BY 1").fetchall()
        assert after == newer  # ... with every row they had
        logged = conn.execute("SELECT sum(row_count), count(*) FROM archive_log WHERE table_name = 'trades'").fetchone()
        assert logged == (len(old), len(dropped))
        assert len(second["tables"]["book_ticker"]["dropped"]) >= 4

    # every old row is in the archive, once, with its exact values (the oracle: the rows read before the drop)
    columns = [c.strip() for c in TRADE_KEY.split(",")]
    assert archived_rows(settings.archive_path, "trades", columns) == sorted(old)
    assert any(r[3] == Decimal("999999999999.99999999") for r in old) and any(r[4] == Decimal("1E-8") for r in old)
    tickers = archived_rows(settings.archive_path, "book_ticker", ["update_id", "best_ask_qty"])
    assert tickers and {q for _, q in tickers} == {Decimal("0.00000001")}
    cli = subprocess.run(
        [sys.executable, "-m", "cryptomon", "archive", "verify"],
        env=env_for(settings, CRYPTOMON_ARCHIVE_DIR=settings.archive_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    n = len(list(archive.files(settings.archive_path)))
    assert cli.returncode == 0 and f"{n} of {n} files verified" in cli.stderr, cli.stderr


def test_the_worker_sets_rows_before_the_horizon_aside(own_db):
    with psycopg.connect(own_db.pg_dsn, autocommit=True) as conn:
        now_ms = conn.execute("SELECT (extract(epoch from now()) * 1000)::bigint").fetchone()[0]
        conn.execute(
            "INSERT INTO archive_horizon (table_name, horizon) VALUES ('trades', now() - interval '10 minutes')"
        )
        rows = [
            TradeRow(now_ms - 11 * 60_000, "BTCUSDT", "trade", 1, "1.5", "2", True, now_ms, False),  # before it
            TradeRow(now_ms - 9 * 60_000, "BTCUSDT", "trade", 2, "1.5", "2", True, now_ms, False),
            TradeRow(now_ms - 60_000, "BTCUSDT", "trade", 3, "bad", "2", True, now_ms, False),  # a bad decimal
            TradeRow(now_ms - 12 * 60_000, "BTCUSDT", "trade", 4, "1.5", "2", True, now_ms, True),  # before it
        ]
        sink = TimescaleSink(own_db.pg_dsn)

        def describe(i: int, error: str) -> DeadLetter:
            return DeadLetter("binance.trades", 0, 100 + i, b"BTCUSDT", str(rows[i].trade_id).encode(), error)

        inserted, rejected = sink.write("trades", rows, [], describe)
        sink.close()
        assert inserted == 1 and sorted(d.offset for d in rejected) == [100, 102, 103]
        assert [r[0] for r in conn.execute("SELECT trade_id FROM trades")] == [2]
        dead = conn.execute("SELECT kafka_offset, payload, error FROM dead_letters ORDER BY 1").fetchall()
        assert [(o, bytes(p)) for o, p, _ in dead] == [(100, b"1"), (102, b"3"), (103, b"4")]
        assert dead[0][2].startswith(BEFORE_HORIZON) and dead[2][2].startswith(BEFORE_HORIZON)
        assert not dead[1][2].startswith(BEFORE_HORIZON)  # the bad decimal, isolated by bisection as before


def test_a_kill_in_the_middle_of_an_archive_leaves_no_half_file_and_drops_nothing(own_db):
    settings = own_db.model_copy(update={"retention_trades": 300})
    root = settings.archive_path
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        insert_trades(conn, 60, per_second=10_000, ago=600)  # 600,000 rows, in one or two chunks
        chunks = chunk_names(conn, "trades")
        conn.execute(
            "INSERT INTO archive_horizon (table_name, horizon, published_at) "
            "VALUES ('trades', date_trunc('minute', now()) - interval '5 minutes', now() - interval '1 hour')"
        )
        env = env_for(settings, CRYPTOMON_ARCHIVE_DIR=root, CRYPTOMON_RETENTION_TRADES=300)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cryptomon", "retention", "--once"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_for(lambda: list(root.glob(f"*/*/*{archive.PARTIAL}")), 60, 0.005, "an archive being written")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert list(archive.files(root)) == []  # no whole file of a chunk that is still there
        wait_for(lambda: conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 600_000, 30,
                 what="the killed transaction rolled back")  # fmt: skip
        assert chunk_names(conn, "trades") == chunks
        assert conn.execute("SELECT count(*) FROM archive_log").fetchone()[0] == 0

        report = Retention(settings).run_once()  # the next pass: the partial removed, the chunks archived
        assert list(root.glob(f"*/*/*{archive.PARTIAL}")) == []
        assert {d["chunk"] for d in report["tables"]["trades"]["dropped"]} == chunks
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 0
    files = list(archive.files(root))
    assert sum(archive.verify(p).rows for p in files) == 600_000
    ids = sorted(i for p in files for i in pq.read_table(p, columns=["trade_id"]).column(0).to_pylist())
    assert ids == list(range(1, 600_001))


def test_books_and_metrics_keep_their_unbounded_decimals_exactly(own_db):
    """order_book_snapshots' NUMERIC[] and book_metrics' NUMERIC without precision: each file gets the
    precision the chunk's values need, and every value reads back equal."""
    settings = own_db.model_copy(
        update={"retention_order_book": 7200, "book_start_lookback_seconds": 60, "retention_metrics": 8 * 86_400}
    )
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT set_chunk_time_interval('order_book_snapshots', INTERVAL '1 hour')")
        conn.execute("SELECT set_chunk_time_interval('book_metrics', INTERVAL '1 day')")
        conn.execute(
            "INSERT INTO order_book_snapshots (snapshot_time, symbol, last_update_id, bid_prices, bid_qtys, "
            "ask_prices, ask_qtys) SELECT date_trunc('hour', now()) - interval '4 hours' + g * interval '1 second', "
            "'BTCUSDT', g, "  # in one hour's chunk, whatever the time of day
            "ARRAY[97000.01 - g * 0.01, 96999.99]::numeric[], ARRAY[0.00000001, 12345678.12345678]::numeric[], "
            "ARRAY[97000.02]::numeric[], ARRAY[]::numeric[] FROM generate_series(1, 500) g"
        )
        conn.execute(
            "INSERT INTO book_metrics (window_start, symbol, last_update_id, samples, mid, microprice, spread_sum, "
            "spread_bps_sum, spread_max, depth_10bps_samples, bid_depth_10bps_sum, ask_depth_10bps_sum, "
            "imbalance_10bps_sum, depth_1pct_samples, bid_depth_1pct_sum, ask_depth_1pct_sum, checks, mismatches, "
            "liquidity_drop) SELECT date_trunc('day', now()) - interval '10 days' + g * interval '30 seconds', "
            "'ETHUSDT', g, 30, "  # in one day's chunk
            "3000.005, 3000.00512345678901234567, 0.3, 1.0 / 3, 0.02, 30, 123456789.123456789, 1, -0.5, 0, 0, 0, "
            "30, 0, false FROM generate_series(1, 100) g"
        )
        books = conn.execute(
            "SELECT last_update_id, bid_prices, bid_qtys, ask_qtys FROM order_book_snapshots"
        ).fetchall()
        metrics = conn.execute("SELECT last_update_id, microprice, spread_bps_sum FROM book_metrics").fetchall()
        (chunk,) = [policy.Chunk(*r) for r in conn.execute(CHUNKS_SQL, ("order_book_snapshots",))]
        columns = {c.name: c for c in Retention._columns(conn, chunk)}  # what sizes each fetch: values a row
        assert [columns[n].values for n in ("last_update_id", "bid_prices", "bid_qtys", "ask_prices", "ask_qtys")] == [
            1, 2, 2, 1, 1,  # an empty array counts as one value
        ]  # fmt: skip
        assert (columns["bid_prices"].precision, columns["bid_prices"].scale) == (7, 2)
        retention = Retention(settings)
        retention.run_once()
        age_horizons(conn)
        report = retention.run_once()
        assert report["tables"]["order_book_snapshots"]["dropped"] and report["tables"]["book_metrics"]["dropped"]
        assert conn.execute("SELECT count(*) FROM order_book_snapshots").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM book_metrics").fetchone()[0] == 0
    root = settings.archive_path
    assert archived_rows(
        root, "order_book_snapshots", ["last_update_id", "bid_prices", "bid_qtys", "ask_qtys"]
    ) == sorted(books)
    assert archived_rows(root, "book_metrics", ["last_update_id", "microprice", "spread_bps_sum"]) == sorted(metrics)
    assert metrics[0][2] == Decimal("0.33333333333333333333")  # PostgreSQL's 1.0 / 3: 20 digits, all kept


def test_one_pass_at_a_time_on_a_database(own_db):
    """A second retention process (a `cryptomon retention` started beside `cryptomon up`) skips its passes
    while another holds the pass lock: it neither removes the other's partial file nor drops a chunk."""
    settings = own_db.model_copy(update={"retention_trades": 3600})
    partial = settings.archive_path / "trades" / "date=2026-12-05" / f"x{archive.PARTIAL}"
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn, psycopg.connect(settings.pg_dsn) as other:
        insert_trades(conn, seconds=180, ago=7200)
        before = chunk_names(conn, "trades")
        retention = Retention(settings)
        retention.run_once()
        age_horizons(conn)
        other.execute("SELECT pg_advisory_lock(%s)", (PASS_LOCK,))  # the other pass, writing a file
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"being written by the other pass")
        report = retention.run_once()
        assert report["skipped"]
        assert retention.registry.get_sample_value("cryptomon_retention_passes_skipped_total") == 1
        assert partial.exists() and chunk_names(conn, "trades") == before
        other.execute("SELECT pg_advisory_unlock(%s)", (PASS_LOCK,))
        report = retention.run_once()
        assert {d["chunk"] for d in report["tables"]["trades"]["dropped"]} == before
        assert not partial.exists() and conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 0


def test_the_loop_runs_each_pass_in_a_child_and_counts_what_it_did(own_db):
    """`cryptomon retention` (the loop) runs a pass in a child process, so what the pass read leaves with the
    child; the loop's metrics count what the child dropped and archived, and a database it cannot reach is
    waited out (db_up 0), not a crash."""
    settings = own_db.model_copy(update={"retention_trades": 300})
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        insert_trades(conn, seconds=180, per_second=100, ago=900)  # 18,000 rows
        before = chunk_names(conn, "trades")
        retention = Retention(settings)
        first = retention.pass_in_child()
        assert first is not None and first["pid"] != os.getpid()
        age_horizons(conn)
        report = retention.pass_in_child()
        assert report is not None and {d["chunk"] for d in report["tables"]["trades"]["dropped"]} == before
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 0
    sample = retention.registry.get_sample_value
    assert sample("cryptomon_retention_chunks_dropped_total", {"table": "trades"}) == len(before)
    assert sample("cryptomon_retention_rows_archived_total", {"table": "trades"}) == 18_000
    assert sample("cryptomon_retention_archive_bytes_total", {"table": "trades"}) == sum(
        p.stat().st_size for p in archive.files(settings.archive_path)
    )
    assert sample("cryptomon_retention_db_up") == 1 and retention.last_pass["pid"] == report["pid"]

    unreachable = Retention(settings.model_copy(update={"pg_dsn": "postgresql://nobody@127.0.0.1:1/none"}))
    assert unreachable.pass_in_child() is None
    assert unreachable.registry.get_sample_value("cryptomon_retention_db_up") == 0 and not unreachable.db_ok
