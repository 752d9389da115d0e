"""`cryptomon up`: the whole pipeline in one command, supervised."""

from __future__ import annotations

import json
import os
import signal
import uuid

import psycopg
import pytest

from cryptomon.services.local import pid_alive
from tests.helpers import Proc, env_for, free_port, get_json, wait_for, wait_json

pytestmark = pytest.mark.integration


def up_env(stack, tmp_path, symbol: str, defaults: bool = False) -> tuple[dict, dict]:
    """`defaults`: the order book as a user gets it (on), not off as the other tests run."""
    ports = {
        "ingest": free_port(),
        "worker": free_port(),
        "book": free_port(),
        "sim": free_port(),
        "dashboard": free_port(),
        "notify": free_port(),
    }
    env = env_for(
        stack,
        CRYPTOMON_SYMBOLS=symbol,
        CRYPTOMON_INGEST_HEALTH_PORT=ports["ingest"],
        CRYPTOMON_WORKER_HEALTH_PORT=ports["worker"],
        CRYPTOMON_BOOK_HEALTH_PORT=ports["book"],
        CRYPTOMON_DASHBOARD_PORT=ports["dashboard"],
        CRYPTOMON_NOTIFY_HEALTH_PORT=ports["notify"],
        CRYPTOMON_ALERT_EMAIL="risk@example.com",
        CRYPTOMON_WORKER_GROUP=f"up-{uuid.uuid4().hex[:6]}",
        CRYPTOMON_SPARK_CHECKPOINT_DIR=tmp_path / "ckpt",
        CRYPTOMON_SPARK_UI_PORT=0,
        CRYPTOMON_SPARK_TRIGGER_SECONDS=2,
        CRYPTOMON_SPARK_MAX_OFFSETS_PER_TRIGGER=50_000_000,
    )
    if defaults:
        del env["CRYPTOMON_DEPTH"]
    return env, ports


TABLES = ("trades", "book_ticker", "trade_metrics", "spread_metrics")


def table_counts(dsn: str, symbol: str, tables: tuple[str, ...] = TABLES) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t} WHERE symbol = %s", (symbol,)).fetchone()[0] for t in tables}


def children(stack) -> dict[str, int]:
    path = stack.state_dir.resolve() / "up.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_up_with_the_simulator_and_the_defaults_fills_every_table_and_ctrl_c_leaves_nothing(stack, tmp_path):
    """The defaults, order book included: the ingestion follows depth@100ms and `up` runs the book stage."""
    symbol = f"UP{uuid.uuid4().hex[:5].upper()}USDT"
    env, ports = up_env(stack, tmp_path, symbol, defaults=True)
    up = Proc("up", ["up", "--feed", "sim", "--sim-port", str(ports["sim"]), "--sim-rate", "40", "--no-live"], env)
    tables = (*TABLES, "order_book_snapshots", "book_metrics")
    try:
        wait_for(
            lambda: all(n > 0 for n in table_counts(stack.pg_dsn, symbol, tables).values()),
            240,
            interval=0.5,
            what=f"rows in {', '.join(tables)}",
        )
        assert get_json(f"http://127.0.0.1:{ports['ingest']}/health")[0] == 200
        assert get_json(f"http://127.0.0.1:{ports['worker']}/health")[0] == 200
        assert get_json(f"http://127.0.0.1:{ports['dashboard']}/health")[0] == 200
        assert get_json(f"http://127.0.0.1:{ports['notify']}/health")[1]["recipients"] == 1  # a count, no address
        book = get_json(f"http://127.0.0.1:{ports['book']}/health")[1]
        assert book["books"][symbol]["synced"] and book["books"][symbol]["mismatches"] == 0, book
        pids = children(stack)
        assert {"feed", "ingest", "worker", "spark", "book", "dashboard", "notify", "up"} <= set(pids)
        up.popen.send_signal(signal.SIGINT)  # Ctrl-C
        assert up.popen.wait(120) == 0, up.log()[-2000:]
    finally:
        up.stop()
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) is still running"
    assert not (stack.state_dir.resolve() / "up.json").exists()
    assert "worker stopped" in up.log() and "spark stopped" in up.log()


def test_a_worker_killed_under_up_is_restarted_and_the_row_count_is_exact(stack, tmp_path):
    symbol = f"UK{uuid.uuid4().hex[:5].upper()}USDT"
    env, ports = up_env(stack, tmp_path, symbol)
    up = Proc(
        "up-kill",
        [
            "up",
            "--feed",
            "sim",
            "--sim-port",
            str(ports["sim"]),
            "--sim-rate",
            "60",
            "--sim-max-steps",
            "400",
            "--no-live",
        ],
        env,
    )
    try:
        wait_for(lambda: table_counts(stack.pg_dsn, symbol)["trades"] > 100, 120, what="rows flowing")
        first = wait_for(lambda: children(stack).get("worker"), 30, what="the worker's pid in up.json")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: children(stack).get("worker") not in (None, first), 60, what="the worker to be restarted")
        stats = wait_json(f"http://127.0.0.1:{ports['sim']}/sim/stats", lambda b: b["done"], 120, "the simulator")
        gen = stats["symbols"][symbol]["generated"]
        expected = {"trades": gen["trade"] + gen["aggTrade"], "book_ticker": gen["bookTicker"]}
        wait_for(
            lambda: {k: v for k, v in table_counts(stack.pg_dsn, symbol).items() if k in expected} == expected,
            120,
            interval=0.5,
            what="exact row counts after the restart",
        )
        assert "worker exited (code -9)" in up.log() and "worker restarted" in up.log()
    finally:
        up.popen.send_signal(signal.SIGTERM)
        up.popen.wait(120)
        up.stop()
