"""Worker benchmark.

1. Drain: N messages preloaded in Kafka (realistic trade/aggTrade/bookTicker payloads) are drained into
   TimescaleDB by `cryptomon worker` (default settings: 500-row flushes) and, in the same run, by the
   spec's literal design (bench/baselines/spec_worker.py: psycopg2 execute_values, 500 rows per batch).
   The tables are emptied between the two. Reported: rows/s from the first to the last committed offset
   (both commit only after their insert; progress is read from Kafka so that polling count(*) does not
   slow the inserts it measures), then the row count is checked.
   The ceiling, in the same run: PostgreSQL's own COPY of the same rows into the same tables, ready-made
   batches over as many connections as the worker has writers (bench/baselines/copy_ceiling.py). And
   with Kafka in: the same messages consumed from the broker (on the same cores), the same rows COPYed
   ready-made and their offsets committed after them, nothing parsed (bench/baselines/kafka_copy_ceiling.py):
   what any worker must do here, drained and timed as the worker is.
   Goal (issue #27): >= 70 % of the ceiling's rows/s and <= 0.35 CPU-seconds of the worker per 100k rows.
   A last drain runs under py-spy (samples holding the GIL: where the worker's Python time goes); its
   top entries are reported, its rate is not.
2. Latency: simulator at 2,000 events/s -> ingestion -> Kafka -> worker; per row, inserted_at minus
   ingestion_ts. Goal: p50 <= 150 ms, p99 <= 500 ms.

    .venv/bin/python bench/worker.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import orjson
import psycopg
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import copy_ceiling
from common import ROOT, bench_stack, cpu_seconds, emit, env_for, machine, spawn, wait

from cryptomon.kafka.clients import consumer_config
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.simulator.market import Market


def preload(bootstrap: str, n: int) -> int:
    market = Market(("BTCUSDT", "ETHUSDT", "BNBUSDT"), seed=9)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 50,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "partitioner": "murmur2_random",
        }
    )
    now, sent = int(time.time() * 1000), 0
    while sent < n:
        for sym in ("BTCUSDT", "ETHUSDT", "BNBUSDT"):
            for kind, payload in market.step(sym, now + sent // 100):
                payload["ingestion_timestamp"] = now + sent // 100
                topic = topic_name(BOOK_TICKER) if kind == "bookTicker" else topic_name(TRADES)
                while True:
                    try:
                        p.produce(topic, orjson.dumps(payload), sym.encode())
                        break
                    except BufferError:
                        p.poll(0.1)
                sent += 1
        if sent % 10000 < 12:
            p.poll(0)
    assert p.flush(120) == 0
    return sent


def row_count(conn) -> int:
    return conn.execute("SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM book_ticker)").fetchone()[0]


class Committed:
    """Messages a consumer group has committed, summed over the topics' partitions. Progress is read
    from Kafka, not with count(*) on the tables, which would compete with the inserts it measures."""

    def __init__(self, bootstrap: str, group: str):
        self.c = Consumer(consumer_config(bootstrap, group))
        md = self.c.list_topics(timeout=10)
        self.parts = [
            TopicPartition(t, p) for t in (topic_name(TRADES), topic_name(BOOK_TICKER)) for p in md.topics[t].partitions
        ]

    def __call__(self) -> int:
        try:
            return sum(max(tp.offset, 0) for tp in self.c.committed(self.parts, timeout=10))
        except KafkaException:  # the group's coordinator is not known yet
            return 0


def drain(
    settings, name: str, cmd: list[str], env: dict, group: str, total: int, logs: Path, exits: bool = False
) -> dict:
    """cryptomon's worker commits a partition's offsets only after its rows are written: committed messages
    are rows in the table. The spec's design commits the consumer's position, which includes messages still
    buffered for the other table: it is timed until it exits by itself after its last flush (`exits`)."""
    committed = Committed(settings.kafka_bootstrap, group)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, book_ticker, dead_letters")
        proc = spawn(cmd, env, logs / f"{name}.log")
        wait(lambda: committed() > 0, 120, f"{name}: first commit", 0.01)
        t0, c0, n0 = time.monotonic(), cpu_seconds(proc.pid), committed()
        wait(lambda: committed() >= total, 1800, f"{name}: {total} committed", 0.02)
        unwritten_when_committed = total - row_count(conn)
        if exits:  # its own end, after its last flush; its CPU from the kernel's accounting of the child
            ended = wait(lambda: (w := os.wait4(proc.pid, os.WNOHANG))[0] and w, 300, f"{name}: exit", 0.02)
            t1, c1 = time.monotonic(), ended[2].ru_utime + ended[2].ru_stime
            proc.returncode = os.waitstatus_to_exitcode(ended[1])
        else:
            t1, c1 = time.monotonic(), cpu_seconds(proc.pid)
            proc.terminate()
            proc.wait(60)
        assert row_count(conn) == total, f"{name}: {row_count(conn)} rows, not {total}"
    committed.c.close()
    rows = total - n0
    return {
        "rows": total,
        "measured_rows": rows,
        "seconds": round(t1 - t0, 3),
        "rows_per_second": round(rows / (t1 - t0)),
        "cpu_s_per_100k_rows": round((c1 - c0) / rows * 1e5, 3),
        # rows not in the tables yet when every offset had been committed (a crash then loses them)
        "unwritten_when_all_committed": unwritten_when_committed,
    }


def ceiling(settings, total: int) -> dict:
    """PostgreSQL's COPY of the same rows, ready-made, into the emptied tables."""
    work = copy_ceiling.batches(settings.kafka_bootstrap, settings.flush_max_rows)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, book_ticker, dead_letters")
        result = copy_ceiling.copy_all(settings.pg_dsn, work, settings.worker_writers)
        assert row_count(conn) == total == result["rows"], f"COPY: {row_count(conn)} rows, not {total}"
    return result


def profile(settings, env: dict, total: int, logs: Path, top: int = 12) -> dict:
    """A drain with py-spy attached (samples of the worker holding the GIL, 100 per second): the functions
    where the worker's Python time goes, by their own time and with what they call."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (the dev extra)"}
    group = "bench-profile"
    committed = Committed(settings.kafka_bootstrap, group)
    raw = logs / "worker-profile.txt"
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, book_ticker, dead_letters")
        proc = spawn([sys.executable, "-m", "cryptomon", "worker"], {**env, "CRYPTOMON_WORKER_GROUP": group},
                     logs / "profile-worker.log")  # fmt: skip
        wait(lambda: committed() > 0, 120, "profile: first commit", 0.01)
        cmd = [spy, "record", "--pid", str(proc.pid), "--gil", "--nonblocking", "--threads", "-r", "100",
               "-f", "raw", "-o", str(raw)]  # fmt: skip
        spy_proc = spawn(cmd, env, logs / "py-spy.log")
        wait(lambda: committed() >= total, 1800, f"profile: {total} rows", 0.05)
        proc.terminate()
        proc.wait(60)
        spy_proc.wait(60)
    committed.c.close()
    return {"samples_file": str(raw), **top_functions(raw.read_text(), top)}


def top_functions(collapsed: str, top: int) -> dict:
    """Own and inclusive shares of each function (file:function, lines merged) in py-spy's raw output."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [_function(f) for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            inclusive[f] += int(n)
    share = lambda c: [[f, round(n / total, 3)] for f, n in c.most_common(top)]  # noqa: E731
    entry = ("cryptomon/__main__.py:", "cryptomon/cli.py:", "cryptomon/worker/service.py:main", "Worker.run")
    ours = Counter({f: n for f, n in inclusive.items() if f.startswith("cryptomon/") and not f.startswith(entry)
                    and not f.endswith(entry)})  # fmt: skip
    return {"samples": total, "own": share(own), "inclusive_cryptomon": share(ours)}


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `file-in-package.py:name`."""
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}"


def per_row_costs(n: int = 20_000) -> dict:
    """Microseconds per trade row of each step of the worker's path, in this process (same interpreter)."""
    from cryptomon.worker.batch import Batch
    from cryptomon.worker.copytext import copy_text
    from cryptomon.worker.rows import trade_row
    from cryptomon.worker.sink import row_arrays

    market = Market(("BTCUSDT",), seed=3)
    values = []
    while len(values) < n:
        for kind, payload in market.step("BTCUSDT", 1_700_000_000_000 + len(values)):
            if kind != "bookTicker":
                payload["ingestion_timestamp"] = 1_700_000_000_001 + len(values)
                values.append(orjson.dumps(payload))

    def timed(fn) -> float:  # the best of 3
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return round(best / len(values) * 1e6, 2)

    # the consumer's messages, in batches of 500 as the worker buffers them
    chunks = [[message(i + j, v) for j, v in enumerate(values[i : i + 500])] for i in range(0, len(values), 500)]
    decoded = [Batch(TRADES, messages=chunk) for chunk in chunks]
    assert all(b.copy_text is not None for b in decoded), "not decoded whole"
    rows = [b.rows for b in decoded]
    return {
        "orjson_loads_us": timed(lambda: [orjson.loads(v) for v in values]),
        "parse_and_validate_us": timed(lambda: [trade_row(v) for v in values]),
        "whole_batch_us": timed(lambda: [Batch(TRADES, messages=chunk).parsed() for chunk in chunks]),
        "copy_text_us": timed(lambda: [copy_text(TRADES, r) for r in rows]),
        "array_literals_us": timed(lambda: [row_arrays(TRADES, r) for r in rows]),
    }


def message(offset: int, value: bytes) -> Message:
    return Message(topic="t", partition=0, offset=offset, key=b"k", value=value, timestamp=(1, 1_800_000_000_000))


def latency(settings, seconds: float, logs: Path) -> dict:
    port, rate_events = 39445, 2000
    env = env_for(
        settings,
        CRYPTOMON_BINANCE_WS_URL=f"ws://127.0.0.1:{port}/stream",
        CRYPTOMON_BINANCE_REST_URL=f"http://127.0.0.1:{port}",
        CRYPTOMON_INGEST_HEALTH_PORT=0,
        CRYPTOMON_WORKER_HEALTH_PORT=port + 1,
        CRYPTOMON_WORKER_GROUP=f"bench-lat-{uuid.uuid4().hex[:6]}",
        CRYPTOMON_DEPTH="off",  # the worker's latency, as measured before the book existed (bench/e2e.py: with it)
    )
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, book_ticker")
        worker = spawn([sys.executable, "-m", "cryptomon", "worker"], env, logs / "lat-worker.log")
        # a new group starts at the earliest offset: let it work through the drain runs' messages first,
        # so that what is measured is the steady state, not a backlog
        wait(lambda: _caught_up(port + 1), 300, "the worker to reach the log end", interval=0.5)
        conn.execute("TRUNCATE trades, book_ticker")
        # one market step is ~3.7 events (1-3 trades, 1 aggTrade, 1 bookTicker)
        sim = spawn(
            [
                sys.executable,
                "-m",
                "cryptomon",
                "feed",
                "sim",
                "--port",
                str(port),
                "--rate",
                str(rate_events / 3.67),
            ],
            env,
            logs / "lat-sim.log",
        )
        ing = spawn([sys.executable, "-m", "cryptomon", "ingest"], env, logs / "lat-ingest.log")
        time.sleep(seconds)
        start_cut = f"now() - interval '{int(seconds - 5)} seconds'"
        for p in (sim, ing, worker):
            p.terminate()
        for p in (sim, ing, worker):
            p.wait(60)
        q = (
            "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms) FROM ("
            " SELECT extract(epoch FROM inserted_at - ingestion_ts) * 1000 AS ms FROM trades"
            f" WHERE ingestion_ts > {start_cut} UNION ALL"
            " SELECT extract(epoch FROM inserted_at - ingestion_ts) * 1000 FROM book_ticker"
            f" WHERE ingestion_ts > {start_cut}) x"
        )
        n, (p50, p99) = conn.execute(q).fetchone()
    return {
        "events_per_second": rate_events,
        "seconds": seconds,
        "rows": n,
        "rate_measured": round(n / (seconds - 5)),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
    }


def _caught_up(health_port: int) -> bool:
    try:
        body = httpx.get(f"http://127.0.0.1:{health_port}/health", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return False
    return bool(body.get("assigned_partitions")) and body.get("consumer_lag") and body["consumer_lag_total"] == 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    n = 200_000 if args.quick else 1_000_000
    logs = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    with bench_stack() as s:
        total = preload(s.kafka_bootstrap, n)
        base_env = env_for(s, CRYPTOMON_WORKER_HEALTH_PORT=0)
        copy = ceiling(s, total)
        ours = drain(
            s,
            "cryptomon",
            [sys.executable, "-m", "cryptomon", "worker"],
            {**base_env, "CRYPTOMON_WORKER_GROUP": "bench-ours"},
            "bench-ours",
            total,
            logs,
        )
        ours_big = drain(
            s,
            "cryptomon-5000",
            [sys.executable, "-m", "cryptomon", "worker"],
            {**base_env, "CRYPTOMON_WORKER_GROUP": "bench-ours-5000", "CRYPTOMON_FLUSH_MAX_ROWS": "5000"},
            "bench-ours-5000",
            total,
            logs,
        )
        kafka_copy = drain(
            s,
            "kafka-copy",
            [
                sys.executable,
                str(ROOT / "bench/baselines/kafka_copy_ceiling.py"),
                s.kafka_bootstrap,
                s.pg_dsn,
                "bench-kafka-copy",
                str(s.flush_max_rows),
                str(s.worker_writers),
            ],
            base_env,
            "bench-kafka-copy",
            total,
            logs,
        )
        spec = drain(
            s,
            "spec-psycopg2",
            [
                sys.executable,
                str(ROOT / "bench/baselines/spec_worker.py"),
                s.kafka_bootstrap,
                s.pg_dsn,
                "bench-spec",
                str(total),
            ],
            base_env,
            "bench-spec",
            total,
            logs,
            exits=True,
        )
        prof = profile(s, base_env, total, logs)
        lat = latency(s, 20 if args.quick else 60, logs)
    ratio = ours["rows_per_second"] / spec["rows_per_second"]
    of_ceiling = ours["rows_per_second"] / copy["rows_per_second"]
    emit(
        {
            "benchmark": "worker",
            "quick": args.quick,
            "machine": machine(),
            "preloaded_messages": total,
            "cryptomon_flush_500": ours,
            "cryptomon_flush_5000": ours_big,
            "baseline_spec_execute_values_500": spec,
            "ceiling_copy": copy,
            "share_of_ceiling": round(of_ceiling, 3),
            "share_of_ceiling_flush_5000": round(ours_big["rows_per_second"] / copy["rows_per_second"], 3),
            "ceiling_kafka_copy": kafka_copy,
            "share_of_kafka_copy_ceiling": round(ours["rows_per_second"] / kafka_copy["rows_per_second"], 3),
            "profile": prof,
            "per_row_us": per_row_costs(),
            "ratio_rows_per_second": round(ratio, 2),
            "ratio_rows_per_second_flush_5000": round(ours_big["rows_per_second"] / spec["rows_per_second"], 2),
            "latency_2000_events_per_s": lat,
            "goals": {
                ">=70%_of_copy": of_ceiling >= 0.70,
                "cpu_s_per_100k_rows<=0.35": ours["cpu_s_per_100k_rows"] <= 0.35,
                "p50<=150ms": lat["p50_ms"] <= 150,
                "p99<=500ms": lat["p99_ms"] <= 500,
            },
            "logs": str(logs),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
