"""Hostile input at every door, on the real stack: a stand-in exchange sends crafted frames between good ones
to `cryptomon ingest`; a foreign producer writes crafted records straight into the topics the worker and the
Spark job read, and a restarted ingestion reads them in its tail. Each costs its dead letters and nothing
else: every good event stored exactly once, every closed window equal to an oracle, no process restarted."""

from __future__ import annotations

import asyncio
import json
import random
import string
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import websockets

from cryptomon.kafka.topics import topic_name
from cryptomon.names import DEADLETTER, TRADES
from cryptomon.simulator.scripted import Span, scripted_events
from cryptomon.supervisor import sim_args
from tests.helpers import TopicTap, exchange_env, free_port, get_json, producer, running, wait_for, wait_json
from tests.integration.test_spark import (
    dead_letters_of,
    fetch,
    new_symbols,
    streaming_job,
    wait_metrics_match_oracle,
)
from tests.integration.test_worker import counts, worker_env

pytestmark = pytest.mark.integration
MINUTE = 60_000


def deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def good_trade(symbol: str, tid: int, now_ms: int) -> dict:
    return {"e": "trade", "E": now_ms, "s": symbol, "t": tid, "p": "10.5", "q": "0.25", "T": now_ms, "m": True,
            "M": True}  # fmt: skip


def hostile_frames(symbol: str, now_ms: int) -> list[tuple[str, bytes]]:
    """(expected dead-letter reason, frame) for each class of the hostile-input issue."""
    stream = f"{symbol.lower()}@trade"

    def bad(**change) -> bytes:  # the stdlib's encoder: orjson stops at 255 levels
        return json.dumps({"stream": stream, "data": {**good_trade(symbol, 10**9, now_ms), **change}}).encode()

    return [
        ("frame_too_large", b"x" * 1_000_000),  # not JSON, inside the WebSocket limit
        ("bad_unknown_field", bad(x=deep(300))),  # a real trade with a field nested 300 levels deep
        ("bad_envelope", json.dumps(deep(300)).encode()),
        ("bad_time", bad(T=253_402_300_800_000)),  # year 10000
        ("bad_time", bad(T=9_300_000_000_000_000)),  # past what a millisecond timestamp holds
        ("bad_time", bad(T=now_ms + 3_600_000)),  # a plausible future
        ("bad_symbol", bad(s="X" * 20_000)),
        ("bad_symbol", bad(s=[symbol])),
        ("not_positive", bad(q="0")),
        ("bad_decimal", bad(p="-1")),
        ("bad_decimal", bad(p="١٠٠")),
        ("bad_id", bad(t=-1)),
        ("unknown_stream", json.dumps({"stream": "evilusdt@trade", "data": {}}).encode()),
    ]


class StandInExchange:
    """A WebSocket server that sends `frames` to the first client of /stream, then keeps it open."""

    def __init__(self, frames: list[bytes]):
        self.frames, self.port, self.sent = frames, free_port(), threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self, ws) -> None:
        if not self.sent.is_set():
            for frame in self.frames:
                await ws.send(frame.decode("utf-8", errors="replace"))
            self.sent.set()
        await ws.wait_closed()  # held open until the server closes: a reconnect is not the point here

    def __enter__(self) -> StandInExchange:
        self.thread.start()

        async def start():
            return await websockets.serve(self._serve, "127.0.0.1", self.port, max_size=None)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def shutdown():  # in the server's loop, so that its handlers end there
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_crafted_frames_cost_one_dead_letter_each_and_the_stream_goes_on(stack):
    symbol = new_symbols("HI", 1)[0]
    now_ms = int(time.time() * 1000)
    hostile = hostile_frames(symbol, now_ms)
    frames, tid = [], 0
    for _, frame in hostile:  # three good trades around every hostile frame, ids consecutive
        for _ in range(3):
            tid += 1
            frames.append(orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": good_trade(symbol, tid, now_ms)}))
        frames.append(frame)
    for _ in range(20):  # and the stream goes on after the last one
        tid += 1
        frames.append(orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": good_trade(symbol, tid, now_ms)}))
    tap = TopicTap(stack.kafka_bootstrap, [topic_name(TRADES), topic_name(DEADLETTER)])
    with StandInExchange(frames) as exchange:
        env = exchange_env(stack, exchange.port, CRYPTOMON_SYMBOLS=symbol, CRYPTOMON_RESUME_MAX_GAP=0)
        health = f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}/health"
        with running("ingest-hostile", ["ingest"], env) as ingest:
            wait_for(exchange.sent.is_set, 60, what="the frames sent")

            def mine(msgs):
                return [m for m in msgs if m.topic() == topic_name(TRADES) and m.key() == symbol.encode()]

            tap.read(lambda msgs: len(mine(msgs)) >= tid, 60)
            letters = wait_json(health, lambda b: sum(b["dead_letters"].values()) >= len(hostile), 60, "dead letters")
            tap.drain()
            body = get_json(health)[1]
            assert ingest.alive()
    tap.close()
    ids = [orjson.loads(m.value())["t"] for m in mine(tap.messages)]
    assert sorted(ids) == list(range(1, tid + 1))  # every good trade once, none of the hostile ones
    assert Counter(letters["dead_letters"]) == Counter(reason for reason, _ in hostile)
    dead = [orjson.loads(m.value()) for m in tap.messages if m.topic() == topic_name(DEADLETTER)]
    big = [d for d in dead if d["reason"] == "frame_too_large"]
    assert big and big[0]["raw_bytes"] == 1_000_000 and big[0]["truncated"] is True  # cut to fit, size kept
    assert all(len(orjson.dumps(d)) < 100_000 for d in dead)
    assert body["task_restarts"] == 0 and body["connected"] is True
    assert "Traceback" not in ingest.log()


def listening_addresses(pid: int) -> list[str]:
    """The local addresses the process tree of `pid` listens on (TCP), as `ss` shows them."""
    pids, todo = set(), [pid]
    while todo:
        p = todo.pop()
        pids.add(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in children.read_text().split()]
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


def foreign_records(symbol: str, start: int) -> list[bytes]:
    """What anyone with access to binance.trades could write: each breaks a naive reader somewhere."""

    def rec(**change) -> bytes:
        base = {"e": "trade", "E": start, "s": symbol, "t": 7 * 10**9, "p": "1.5", "q": "2", "T": start + 30_000,
                "m": True, "ingestion_timestamp": start + 30_005}  # fmt: skip
        return json.dumps({**base, **change}).encode()

    far = 253_402_300_800_000
    return [
        rec(s=["X"]),  # made every later `cryptomon ingest` die at start
        rec(q="0"),  # a window of nothing but zero quantities divided by zero in the repair
        rec(T=far, ingestion_timestamp=far + 5),  # year 10000: Spark's collect() and its watermark
        rec(T=9_300_000_000_000_000),  # overflows timestamp_millis
        rec(T=start + 3_600_000, ingestion_timestamp=start + 3_600_005),  # a plausible future
        rec(T=-62_135_596_800_001),  # before year 1
        rec(p="١٠٠"),
        rec(s="X" * 20_000),  # an index entry PostgreSQL refuses (SQLSTATE 54000)
        rec(t=-3),
        b"\x00\xffnot json",
        json.dumps(deep(300)).encode(),
    ]


def test_foreign_records_in_the_topics_cost_dead_letters_not_a_stage(stack, tmp_path):
    symbol = new_symbols("HK", 1)[0]
    start = (int(time.time() * 1000) // MINUTE - 4) * MINUTE
    events = scripted_events((symbol,), start, [Span(150)], steps_per_second=2.0, seed=12)
    records = foreign_records(symbol, start)
    job = streaming_job(stack, tmp_path, "spark-hostile")
    wenv, wport = worker_env(stack)
    p = producer(stack.kafka_bootstrap)
    half = len(events) // 2
    try:
        for i, (kind, payload) in enumerate(events):
            topic = topic_name("book_ticker") if kind == "bookTicker" else topic_name(TRADES)
            p.produce(topic, orjson.dumps(payload), symbol.encode())
            if i == half:
                for value in records:
                    p.produce(topic_name(TRADES), value, symbol.encode())
        assert p.flush(60) == 0
        n_trades = sum(1 for k, _ in events if k != "bookTicker")
        with running("worker-hostile", ["worker"], wenv) as worker:
            wait_for(lambda: counts(stack.pg_dsn, (symbol,)) == (n_trades, len(events) - n_trades), 120,
                     what="every good row")  # fmt: skip
            wait_json(f"http://127.0.0.1:{wport}/health", lambda b: b["consumer_lag_total"] == 0, 60, "lag 0")
            wait_metrics_match_oracle(stack, (symbol,), 180)
            assert worker.alive() and job.alive()
            listening = listening_addresses(job.popen.pid)
        # nothing of the Spark job (driver RPC, block manager, py4j) listens beyond loopback
        assert listening and all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for a in listening), listening
        dead = dead_letters_of(stack, symbol)
        assert len(dead) == len(records)  # one row per record, whether the worker or Spark wrote it first
        # nothing of them reached a table: the good rows are exactly the scripted ones
        assert counts(stack.pg_dsn, (symbol,)) == (n_trades, len(events) - n_trades)
        assert fetch(stack.pg_dsn, "SELECT count(*) FROM trades WHERE length(symbol) > 20", ())[0][0] == 0
    finally:
        job.stop()
    assert "Traceback" not in job.log()
    # a restarted ingestion reads those records in the tail of binance.trades, and starts
    port = free_port()
    env = exchange_env(stack, port, CRYPTOMON_SYMBOLS=symbol)
    with (
        running("sim-hostile", sim_args(port, "--rate", "20", "--max-steps", "50"), env),
        running("ingest-after-hostile", ["ingest"], env) as ingest,
    ):
        health = f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}/health"
        wait_json(health, lambda b: b["connected"] and sum(b["messages_produced"].values()) > 0, 60, "a running ingest")
        assert ingest.alive()
    assert "Traceback" not in ingest.log()


def test_a_row_postgresql_refuses_for_its_size_is_set_aside_not_retried_as_an_outage(stack):
    """The database's own door: a symbol too long for an index entry (SQLSTATE 54000, which psycopg files
    under OperationalError like a lost connection) is isolated and dead-lettered; the rows around it land."""
    from cryptomon.worker.rows import DeadLetter, TradeRow
    from cryptomon.worker.sink import TimescaleSink

    symbol = new_symbols("HD", 1)[0]
    now = int(time.time() * 1000)
    rows = [TradeRow(now, symbol, "trade", i, "1.5", "2", True, now + 1, False) for i in range(1, 6)]
    noise = "".join(random.Random(7).choices(string.ascii_uppercase, k=20_000))  # "Y" * 20_000 compresses to fit
    rows.insert(2, TradeRow(now, noise, "trade", 3_000, "1.5", "2", True, now + 1, False))

    def describe(index: int, error: str) -> DeadLetter:
        return DeadLetter(topic_name(TRADES), 0, 10**15 + index, symbol.encode(), b"huge", error)

    sink = TimescaleSink(stack.pg_dsn)
    try:
        inserted, rejected = sink.write(TRADES, rows, [], describe)
    finally:
        sink.close()
    assert inserted == 5 and len(rejected) == 1 and "index row" in rejected[0].error
    assert counts(stack.pg_dsn, (symbol,))[0] == 5
    assert len(dead_letters_of(stack, symbol)) == 1


def test_the_dashboards_read_only_role_cannot_write_and_the_app_role_cannot_change_the_schema(stack):
    import psycopg
    from psycopg import errors

    from cryptomon.db.roles import ensure_roles
    from cryptomon.services.local import TimescaleDB

    tag = new_symbols("R", 1)[0].lower()
    app, reader = f"app_{tag}", f"reader_{tag}"
    db = TimescaleDB(stack)  # the superuser over the socket, as docker compose's POSTGRES_USER would be
    admin = f"postgresql://{db.superuser}@/{stack.pg_dsn.rsplit('/', 1)[1]}?host={db.socket_dir}&port={db.port}"
    assert ensure_roles(admin, app, "app-secret", reader, "reader-secret") == [
        f"created role {app}",
        f"created role {reader}",
    ]
    ensure_roles(admin, app, "app-secret", reader, "reader-secret")  # idempotent

    def dsn(user: str, password: str) -> str:
        return stack.pg_dsn.replace(stack.pg_dsn.split("//", 1)[1].split("@", 1)[0], f"{user}:{password}", 1)

    now = int(time.time() * 1000)
    with psycopg.connect(dsn(app, "app-secret"), autocommit=True) as conn:
        conn.execute("INSERT INTO trades (event_time, symbol, event_type, trade_id, price, quantity, is_buyer_maker,"
                     " ingestion_ts, backfilled) VALUES (now(), %s, 'trade', 1, 1, 1, true, now(), false)",
                     (tag.upper(),))  # fmt: skip
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE evil (x int)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    with psycopg.connect(dsn(reader, "reader-secret"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM trades WHERE symbol = %s", (tag.upper(),)).fetchone()[0] == 1
        for statement in ("DELETE FROM trades", "COPY (SELECT 1) TO PROGRAM 'true'", "CREATE TABLE evil (x int)"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    assert now > 0
