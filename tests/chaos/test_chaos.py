"""Faults under load, each ending with an exact accounting: every event is in the tables exactly once,
and the metrics equal the SQL oracle. Quick form (CI): tens of seconds of traffic per scenario."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from cryptomon.services.local import KafkaBroker, TimescaleDB
from cryptomon.simulator.scripted import Span, scripted_events
from cryptomon.supervisor import sim_args
from tests.helpers import FUTURE_SKEW, Proc, exchange_env, free_port, get_json, post, running, wait_for, wait_json
from tests.integration.test_spark import MINUTE, new_symbols, spark_env, wait_metrics_match_oracle
from tests.integration.test_spark import produce as produce_events
from tests.integration.test_worker import counts, make_events, produce, symbols_for_test, worker_env

pytestmark = pytest.mark.integration


def sim_env(stack, port: int, symbols: tuple[str, ...], **extra) -> dict:
    return exchange_env(
        stack,
        port,
        CRYPTOMON_SYMBOLS=",".join(symbols),
        CRYPTOMON_WORKER_HEALTH_PORT=free_port(),
        CRYPTOMON_WORKER_GROUP=f"chaos-{uuid.uuid4().hex[:6]}",
        **extra,
    )


def expected_rows(stats: dict, symbols: tuple[str, ...]) -> tuple[int, int]:
    gen = [stats["symbols"][s]["generated"] for s in symbols]
    return sum(g["trade"] + g["aggTrade"] for g in gen), sum(g["bookTicker"] for g in gen)


def test_kafka_broker_killed_and_restarted_while_ingestion_produces(chaos_stack):
    """kill -9 of the broker under load: the producer holds and retries (acks=all, idempotent), the worker
    waits; after the restart every generated event is in TimescaleDB exactly once, nobody crashed."""
    symbols = tuple(f"KB{uuid.uuid4().hex[:4].upper()}{i}USDT" for i in range(2))
    port = free_port()
    env = sim_env(chaos_stack, port, symbols)
    broker = KafkaBroker(chaos_stack)
    with (
        running("chaos-kb-sim", sim_args(port, "--rate", "120", "--max-steps", "2500"), env),
        running("chaos-kb-ingest", ["ingest"], env) as ingest,
        running("chaos-kb-worker", ["worker"], env) as worker,
    ):
        wait_for(lambda: counts(chaos_stack.pg_dsn, symbols)[0] > 500, 90, what="rows flowing")
        os.kill(broker.pid(), signal.SIGKILL)
        wait_for(lambda: not broker.running(), 30, what="the broker to be dead")
        time.sleep(3)  # the outage itself: ingestion keeps receiving frames while Kafka is gone
        mid = counts(chaos_stack.pg_dsn, symbols)
        broker.start()
        stats = wait_json(f"http://127.0.0.1:{port}/sim/stats", lambda b: b["done"], 120, "the simulator to finish")
        want = expected_rows(stats, symbols)
        wait_for(
            lambda: counts(chaos_stack.pg_dsn, symbols) == want,
            180,
            interval=0.5,
            what=f"exactly {want} rows after the broker restart",
        )
        assert ingest.alive() and worker.alive()
    assert sum(mid) < sum(want)  # the broker really died mid-run
    assert "Traceback" not in ingest.log() and "Traceback" not in worker.log()


def test_worker_killed_repeatedly_and_a_second_worker_joining_and_dying(chaos_stack):
    """kill -9 of the worker three times mid-batch, and a second worker of the same group that joins
    (rebalance) and is killed too: still exactly one row per message."""
    symbols = symbols_for_test()
    trades, books = make_events(6000, symbols)
    want = (len(trades), len(books))
    # produced while the workers are killed, so that every kill lands mid-stream
    producer = threading.Thread(
        target=produce, args=(chaos_stack.kafka_bootstrap, trades, books), kwargs={"rate": 900}, daemon=True
    )
    producer.start()
    group = f"chaos-{uuid.uuid4().hex[:6]}"
    env, port = worker_env(chaos_stack, group, CRYPTOMON_FLUSH_MAX_ROWS=200)
    env2, _ = worker_env(chaos_stack, group, CRYPTOMON_FLUSH_MAX_ROWS=200)
    seen = []
    for i in range(3):
        w = Proc(f"chaos-worker-{i}", ["worker"], env)
        try:
            floor = sum(counts(chaos_stack.pg_dsn, symbols))
            wait_for(lambda: sum(counts(chaos_stack.pg_dsn, symbols)) > floor + 1500, 90, what="progress")
            if i == 1:  # a second member: the group rebalances while the first keeps writing
                second = Proc("chaos-worker-second", ["worker"], env2)
                try:
                    wait_for(lambda: "assigned" in second.log(), 60, what="the second worker's assignment")
                    floor2 = sum(counts(chaos_stack.pg_dsn, symbols))
                    wait_for(lambda: sum(counts(chaos_stack.pg_dsn, symbols)) > floor2 + 500, 90, what="progress")
                    second.stop(signal.SIGKILL)
                finally:
                    second.stop()
            w.stop(signal.SIGKILL)
        finally:
            w.stop()
        seen.append(sum(counts(chaos_stack.pg_dsn, symbols)))
    assert seen[-1] < sum(want)  # killed before the end
    producer.join(120)
    with running("chaos-worker-last", ["worker"], env):
        wait_for(lambda: counts(chaos_stack.pg_dsn, symbols) == want, 120, what="all rows")
        wait_json(f"http://127.0.0.1:{port}/health", lambda b: b["consumer_lag_total"] == 0, 60, "lag 0")
    assert counts(chaos_stack.pg_dsn, symbols) == want


def test_timescaledb_restarted_while_the_worker_and_spark_write(chaos_stack, tmp_path):
    """PostgreSQL stopped and started under the worker and the Spark job: both wait and retry, neither
    exits, and at the end raw rows are exact and the metrics equal the SQL oracle."""
    symbols = new_symbols("DB")
    start = (int(time.time() * 1000) // MINUTE + 5) * MINUTE  # later than anything else in the topics
    events = scripted_events(symbols, start, [Span(360)], steps_per_second=2.0, seed=11)
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    n_trades = sum(1 for k, _ in events if k != "bookTicker")
    env = spark_env(chaos_stack, tmp_path / "ckpt", CRYPTOMON_SPARK_TRIGGER_SECONDS=1, CRYPTOMON_DB_RETRY_MAX=2,
                    **FUTURE_SKEW)  # fmt: skip
    wenv, wport = worker_env(chaos_stack, CRYPTOMON_DB_RETRY_MAX=2, **FUTURE_SKEW)
    db = TimescaleDB(chaos_stack)
    produce_events(chaos_stack.kafka_bootstrap, first)
    with running("chaos-db-worker", ["worker"], wenv) as worker, running("chaos-db-spark", ["spark"], env) as spark:
        wait_for(lambda: counts(chaos_stack.pg_dsn, symbols)[0] > 0, 120, what="raw rows")
        wait_for(lambda: _metric_rows(chaos_stack, symbols) > 0, 180, what="first metrics")
        db.stop()
        produce_events(chaos_stack.kafka_bootstrap, second)  # arrives while the database is down
        wait_for(lambda: "retrying this micro-batch's write" in spark.log(), 180, what="Spark retrying its write")
        wait_for(lambda: get_json(f"http://127.0.0.1:{wport}/health")[1]["db_failures"] > 0, 60,
                 what="the worker retrying its write")  # fmt: skip
        db.start()
        wait_for(
            lambda: counts(chaos_stack.pg_dsn, symbols) == (n_trades, len(events) - n_trades),
            120,
            what="exact raw rows after the restart",
        )
        wait_metrics_match_oracle(chaos_stack, symbols, what="metrics equal to the oracle after the restart")
        assert worker.alive() and spark.alive()
    assert "Traceback" not in spark.log() and "Traceback" not in worker.log()


def _metric_rows(stack, symbols) -> int:
    from tests.integration.test_spark import fetch

    return fetch(stack.pg_dsn, "SELECT count(*) FROM trade_metrics WHERE symbol = ANY(%s)", (list(symbols),))[0][0]


def test_exchange_dropped_stalled_and_malformed_under_load(chaos_stack):
    """Connection dropped three times, stalled past the stale timeout, malformed frames: every trade the
    exchange generated is stored once (gaps backfilled over REST), bookTickers as received."""
    symbols = tuple(f"EX{uuid.uuid4().hex[:4].upper()}{i}USDT" for i in range(2))
    port = free_port()
    env = sim_env(
        chaos_stack, port, symbols, CRYPTOMON_WS_STALE_AFTER=2, CRYPTOMON_BACKOFF_INITIAL=0.2, CRYPTOMON_BACKOFF_MAX=1
    )
    base = f"http://127.0.0.1:{port}"
    with (
        running("chaos-ex-sim", sim_args(port, "--rate", "80", "--max-steps", "1500"), env),
        running("chaos-ex-ingest", ["ingest"], env) as ingest,
        running("chaos-ex-worker", ["worker"], env),
    ):
        wait_for(lambda: counts(chaos_stack.pg_dsn, symbols)[0] > 200, 90, what="rows flowing")
        for _ in range(3):
            post(f"{base}/sim/drop")
            time.sleep(1.5)
        post(f"{base}/sim/inject?kind=malformed&count=5")
        post(f"{base}/sim/stall?seconds=4")
        stats = wait_json(f"{base}/sim/stats", lambda b: b["done"], 120, "the simulator to finish")
        # trades: everything generated (what was missed while disconnected is backfilled over REST);
        # bookTicker has no history to backfill: exactly what the exchange sent is stored
        want = (expected_rows(stats, symbols)[0], sum(stats["symbols"][s]["sent"]["bookTicker"] for s in symbols))
        wait_for(lambda: counts(chaos_stack.pg_dsn, symbols) == want, 120, interval=0.5, what=f"exactly {want} rows")
        health = get_json(f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}/health")[1]
        assert ingest.alive()
    assert stats["drops"] == 3 and stats["malformed_sent"] == 5  # a fault counts once a client received it
    assert health["reconnects"] >= 4 and health["events_backfilled"] > 0  # 3 drops + the stall
    assert sum(health["dead_letters"].values()) == 5  # the malformed frames


def test_state_folder_disk_nearly_full(small_disk_stack):
    """The state folder's disk filled to below CRYPTOMON_DISK_MIN_FREE_MB while the exchange streams: the
    ingestion disconnects and the worker holds its inserts, each saying why on /health and in its log;
    `services up` refuses with the same reason; Kafka and PostgreSQL never run out of space (same
    processes throughout). Once room is made, everything resumes by itself and every trade is stored
    exactly once (the ones streamed meanwhile backfilled), bookTickers as received."""
    from cryptomon.diskguard import MB
    from cryptomon.services.local import ServiceError, stack_up

    stack = small_disk_stack
    symbols = tuple(f"DF{uuid.uuid4().hex[:4].upper()}{i}USDT" for i in range(2))
    port = free_port()
    env = sim_env(
        stack,
        port,
        symbols,
        CRYPTOMON_DISK_MIN_FREE_MB=64,
        CRYPTOMON_BACKOFF_INITIAL=0.2,
        CRYPTOMON_BACKOFF_MAX=1,
        CRYPTOMON_DB_RETRY_MAX=1,
    )
    base = f"http://127.0.0.1:{port}"
    ingest_health = f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}/health"
    worker_health = f"http://127.0.0.1:{env['CRYPTOMON_WORKER_HEALTH_PORT']}/health"
    broker, db = KafkaBroker(stack), TimescaleDB(stack)
    pids = (broker.pid(), db.pid())
    filler = stack.state_dir / "filler"
    with (
        running("chaos-disk-sim", sim_args(port, "--rate", "80", "--max-steps", "2000"), env),
        running("chaos-disk-ingest", ["ingest"], env) as ingest,
        running("chaos-disk-worker", ["worker"], env) as worker,
    ):
        wait_for(lambda: counts(stack.pg_dsn, symbols)[0] > 200, 90, what="rows flowing")
        st = os.statvfs(stack.state_dir)
        with open(filler, "wb") as f:  # leaves 32 MB: below the minimum, far from full
            os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - 32 * MB)
        ing = wait_json(
            ingest_health,
            lambda b: b["disk_full_pauses"] >= 1 and not b["connected"],
            30,
            "the ingestion to disconnect",
        )
        wrk = wait_json(
            worker_health, lambda b: b["paused"] and b["disk_full_pauses"] >= 1, 30, "the worker to hold its inserts"
        )
        held = counts(stack.pg_dsn, symbols)
        with pytest.raises(ServiceError, match="disk nearly full"):
            stack_up(stack)
        steps = wait_json(f"{base}/sim/stats", lambda b: True)["symbols"][symbols[0]]["steps"]
        wait_json(
            f"{base}/sim/stats",
            lambda b: b["symbols"][symbols[0]]["steps"] >= steps + 240,
            30,
            "the exchange to stream on for 3 s while the pipeline waits",
        )
        assert counts(stack.pg_dsn, symbols) == held  # nothing was written meanwhile
        assert get_json(ingest_health)[0] == 503 and get_json(worker_health)[0] == 503
        filler.unlink()
        stats = wait_json(f"{base}/sim/stats", lambda b: b["done"], 120, "the simulator to finish")
        want = (expected_rows(stats, symbols)[0], sum(stats["symbols"][s]["sent"]["bookTicker"] for s in symbols))
        wait_for(lambda: counts(stack.pg_dsn, symbols) == want, 120, interval=0.5, what=f"exactly {want} rows")
        after = get_json(ingest_health)[1]
        assert ingest.alive() and worker.alive()
    assert ing["disk"]["ok"] is False and ing["disk"]["free_mb"] < 64 and ing["disk"]["min_free_mb"] == 64
    assert wrk["disk"]["ok"] is False and "disk nearly full" in wrk["pause_reason"]
    assert sum(held) < sum(want) and after["events_backfilled"] > 0
    assert "disk nearly full" in ingest.log() and "disk nearly full" in worker.log()
    assert "disk has room again" in ingest.log() and "disk has room again" in worker.log()
    assert (broker.pid(), db.pid()) == pids  # neither service ran out of space and died
    assert "Traceback" not in ingest.log() and "Traceback" not in worker.log()
