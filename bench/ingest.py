"""Ingestion benchmark: simulator firehose -> ingestion -> Kafka (acks=all), against a naive baseline.

Both candidates read the same pre-generated frames from the simulator over a real WebSocket and produce
to a real broker. Reported per candidate: sustained messages/s (from Kafka's watermarks, first to last
message) and CPU seconds of the ingestion process per 100k messages; `msgs_per_cpu_second` is the rate
one fully busy core would sustain. Goal: >= 50,000 messages/s on one core and >= 5x the baseline.

    .venv/bin/python bench/ingest.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TopicCounter, bench_stack, cpu_seconds, emit, env_for, machine, spawn, wait

from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES

TOPICS = [topic_name(TRADES), topic_name(BOOK_TICKER)]


def measure(settings, name: str, steps: int, cmd_for, logs: Path, port: int) -> dict:
    env = env_for(
        settings,
        CRYPTOMON_BINANCE_WS_URL=f"ws://127.0.0.1:{port}/stream",
        CRYPTOMON_BINANCE_REST_URL=f"http://127.0.0.1:{port}",
        CRYPTOMON_INGEST_HEALTH_PORT=0,
    )
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
            "0",
            "--max-steps",
            str(steps),
        ],
        env,
        logs / f"sim-{name}.log",
    )
    counter = TopicCounter(settings.kafka_bootstrap, TOPICS)
    try:
        stats = wait(lambda: _stats(port), 300, "the simulator to pre-generate its frames", 0.2)
        total = stats["ready_frames"]
        proc = spawn(
            cmd_for(
                f"ws://127.0.0.1:{port}/stream?streams="
                + "/".join(f"{s.lower()}@{k}" for s in settings.symbols for k in ("trade", "aggTrade", "bookTicker")),
                total,
                env,
            ),
            env,
            logs / f"{name}.log",
        )
        # the clock starts when the candidate is connected (its start-up is not measured)
        wait(lambda: (_stats(port) or {}).get("connections", 0) >= 1, 60, f"{name}: connection", 0.002)
        t0, cpu0, n0 = time.monotonic(), cpu_seconds(proc.pid), counter.count()
        wait(lambda: counter.count() >= total, 900, f"{name}: all {total} messages", 0.01)
        t1, cpu1, n1 = time.monotonic(), cpu_seconds(proc.pid), counter.count()
        proc.terminate()
        proc.wait(60)
    finally:
        sim.terminate()
        sim.wait(30)
        counter.close()
    msgs = n1 - n0
    cpu = cpu1 - cpu0
    return {
        "messages": total,
        "measured_messages": msgs,
        "seconds": round(t1 - t0, 3),
        "msgs_per_second": round(msgs / (t1 - t0)),
        "cpu_seconds": round(cpu, 3),
        "cpu_s_per_100k": round(cpu / msgs * 100_000, 3),
        "msgs_per_cpu_second": round(msgs / cpu) if cpu else None,
    }


def _stats(port: int):
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/sim/stats", timeout=2).json()
    except httpx.HTTPError:
        return None
    return body if body.get("ready_frames") else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs (CI smoke)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    steps, base_steps = (10000, 150) if args.quick else (60000, 600)
    logs = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    with bench_stack() as settings:
        ours = measure(
            settings,
            "cryptomon",
            steps,
            lambda url, n, env: [sys.executable, "-m", "cryptomon", "ingest"],
            logs,
            39443,
        )
        naive = measure(
            settings,
            "naive",
            base_steps,
            lambda url, n, env: [
                sys.executable,
                str(ROOT / "bench/baselines/naive_ingest.py"),
                url,
                settings.kafka_bootstrap,
                str(n),
            ],
            logs,
            39444,
        )
    ratio = ours["msgs_per_second"] / naive["msgs_per_second"]
    result = {
        "benchmark": "ingestion",
        "quick": args.quick,
        "machine": machine(),
        "cryptomon": ours,
        "baseline_naive": naive,
        "ratio_msgs_per_second": round(ratio, 1),
        "ratio_cpu_per_message": round(naive["cpu_s_per_100k"] / ours["cpu_s_per_100k"], 1),
        "goals": {"msgs_per_cpu_second>=50000": (ours["msgs_per_cpu_second"] or 0) >= 50_000, "ratio>=5": ratio >= 5},
        "logs": str(logs),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
