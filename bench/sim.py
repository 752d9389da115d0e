"""Simulator benchmark: the whole market from one process, and its memory over a long run.

`cryptomon feed sim --market whole` (400 TRADING USDT pairs) is asked for Binance's whole-market spot
rates, ~2,000 trades/s and ~8,000 bookTickers/s in total (issue #15): 1,250 market steps/s (a step is 1-3
trades, mean 1.6, one aggTrade and one bookTicker) plus 5.4 bookTicker-only updates per step. One client
process listens to all 1,200 trade/aggTrade/bookTicker streams over several combined-stream connections
and counts what arrives. Reported: frames/s received per kind against the target, the simulator's CPU
(cores) and RSS every 10 s; with --soak, RSS growth from the second quarter of the run to the last
(goal <= 20 MiB).

Baseline in the same run, the transport's ceiling: the same client and the same 1,200 streams against the
simulator's firehose mode (every frame serialised before the first is sent, so no market generation at
all), frames/s received. The ratio says how much of what the WebSocket fan-out could carry the live
market uses.

    .venv/bin/python bench/sim.py [--quick] [--soak] [--seconds S] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_seconds, emit, machine, quarter_mean, spawn, tree_usage, wait

from cryptomon.binance.schema import AGG_TRADE, BOOK_TICKER_EVENT, TRADE

TARGET = {TRADE: 2_000, BOOK_TICKER_EVENT: 8_000}  # per second over the whole market
STEPS_PER_SECOND = 1_250  # x 1.6 trades per step = 2,000 trades/s
BOOK_UPDATES = 5.4  # (1 + 5.4) x 1,250 = 8,000 bookTickers/s
STREAMS_PER_URL = 200  # keeps a URL under aiohttp's 8 KB request line; well below 1,024 streams
SOAK_RSS_GROWTH_MB = 20
SAMPLE_EVERY = 10.0


def sim_cmd(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cryptomon", "feed", "sim", "--market", "whole", "--port", str(port), *extra]


def streams_of(port: int) -> list[str]:
    info = httpx.get(f"http://127.0.0.1:{port}/api/v3/exchangeInfo", timeout=10).json()
    symbols = [s["symbol"].lower() for s in info["symbols"] if s["status"] == "TRADING"]
    return [f"{s}@{k}" for s in symbols for k in (TRADE, AGG_TRADE, BOOK_TICKER_EVENT)]


async def listen(
    port: int, streams: list[str], seconds: float, on_sample, idle: float | None = None
) -> tuple[Counter, float, float]:
    """Count frames per kind on all streams for `seconds` after the first frame, or until none came for
    `idle` seconds; returns (counts, first, last) monotonic times. `on_sample(elapsed, counts)` runs every
    SAMPLE_EVERY seconds."""
    counts: Counter = Counter()
    times = {"first": 0.0, "last": 0.0}
    started = asyncio.Event()
    chunks = [streams[i : i + STREAMS_PER_URL] for i in range(0, len(streams), STREAMS_PER_URL)]

    async def one(session: aiohttp.ClientSession, chunk: list[str]) -> None:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/stream?streams={'/'.join(chunk)}") as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                text = msg.data  # {"stream":"btcusdt@trade","data":...}: the kind without parsing the JSON
                counts[text[text.index("@", 11) + 1 : text.index('"', 11)]] += 1
                now = time.monotonic()
                if not times["first"]:
                    times["first"] = now
                    started.set()
                times["last"] = now

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(one(session, c)) for c in chunks]
        await asyncio.wait_for(started.wait(), 120)
        start = times["first"]
        next_sample = start + SAMPLE_EVERY
        while time.monotonic() < start + seconds and not all(t.done() for t in tasks):
            await asyncio.sleep(0.2)
            if idle is not None and time.monotonic() - times["last"] > idle:
                break
            if time.monotonic() >= next_sample:
                on_sample(time.monotonic() - start, counts)
                next_sample += SAMPLE_EVERY
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts, times["first"], times["last"]


def live(port: int, seconds: float, logs: Path) -> dict:
    sim = spawn(sim_cmd(port, "--rate", str(STEPS_PER_SECOND), "--book-updates", str(BOOK_UPDATES)),
                dict(os.environ), logs / "sim-live.log")  # fmt: skip
    try:
        streams = wait(lambda: _try(streams_of, port), 60, "the simulator's exchangeInfo", 0.2)
        rss: list[int] = []
        samples: list[dict] = []
        cpu0, client0 = tree_usage(sim.pid)[0], cpu_seconds(os.getpid())
        started = time.monotonic()

        def sample(elapsed: float, counts: Counter) -> None:
            rss.append(tree_usage(sim.pid)[1])
            samples.append({"t": round(elapsed), "rss_mb": round(rss[-1] / 2**20, 1), "frames": sum(counts.values())})

        counts, first, last = asyncio.run(listen(port, streams, seconds, sample))
        elapsed = time.monotonic() - started
        cpu = tree_usage(sim.pid)[0] - cpu0
        client_cpu = cpu_seconds(os.getpid()) - client0
        span = max(1e-9, last - first)
        stats = httpx.get(f"http://127.0.0.1:{port}/sim/stats", timeout=10).json()
    finally:
        sim.terminate()
        sim.wait(30)
    per_s = {k: round(v / span, 1) for k, v in sorted(counts.items())}
    result = {
        "symbols": len(streams) // 3,
        "streams": len(streams),
        "connections": -(-len(streams) // STREAMS_PER_URL),
        "seconds": round(span, 1),
        "received_per_second": per_s,
        "frames_per_second": round(sum(counts.values()) / span, 1),
        "target_per_second": TARGET,
        "sim_cpu_cores": round(cpu / elapsed, 2),
        "client_cpu_cores": round(client_cpu / elapsed, 2),
        "sim_rss_mb_first_last": [samples[0]["rss_mb"], samples[-1]["rss_mb"]] if samples else None,
        "sim_limits_refused": stats.get("refused"),
        "samples": samples,
    }
    if len(rss) >= 4:
        result["sim_rss_growth_mb_q2_to_q4"] = round((quarter_mean(rss, 3) - quarter_mean(rss, 1)) / 2**20, 1)
    return result


def firehose(port: int, steps: int, logs: Path) -> dict:
    sim = spawn(sim_cmd(port, "--rate", "0", "--max-steps", str(steps)), dict(os.environ), logs / "sim-firehose.log")
    try:
        wait(lambda: _try(lambda p: httpx.get(f"http://127.0.0.1:{p}/sim/stats", timeout=5).json()["ready_frames"], port),
             600, "the firehose frames", 0.5)  # fmt: skip
        streams = streams_of(port)
        counts, first, last = asyncio.run(listen(port, streams, 600, lambda *_: None, idle=2.0))
    finally:
        sim.terminate()
        sim.wait(30)
    return {
        "frames": sum(counts.values()),
        "frames_per_second": round(sum(counts.values()) / max(1e-9, last - first), 1),
    }


def _try(fn, *args):
    try:
        return fn(*args)
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 s live, a small firehose")
    ap.add_argument("--soak", action="store_true", help="30 minutes live; RSS growth from the 2nd quarter to the 4th")
    ap.add_argument("--seconds", type=float, help="live run length (default 60, quick 20, soak 1800)")
    ap.add_argument("--port", type=int, default=39450)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    seconds = args.seconds or (1800 if args.soak else 20 if args.quick else 60)
    with tempfile.TemporaryDirectory(prefix="cryptomon-bench-sim-") as tmp:
        logs = Path(tmp)
        run = live(args.port, seconds, logs)
        ceiling = firehose(args.port + 1, 100 if args.quick else 300, logs)
    got = run["received_per_second"]
    goals = {
        "whole_market_trades_per_second": got.get(TRADE, 0) >= 0.95 * TARGET[TRADE],
        "whole_market_book_tickers_per_second": got.get(BOOK_TICKER_EVENT, 0) >= 0.95 * TARGET[BOOK_TICKER_EVENT],
    }
    if args.soak:
        goals["soak_sim_rss_growth_within_20_mib"] = run.get("sim_rss_growth_mb_q2_to_q4", 1e9) <= SOAK_RSS_GROWTH_MB
    emit(
        {
            "benchmark": "sim",
            "quick": args.quick,
            "soak": args.soak,
            "machine": machine(),
            "live": run,
            "baseline_firehose": ceiling,
            "live_share_of_firehose": round(run["frames_per_second"] / max(1e-9, ceiling["frames_per_second"]), 3),
            "goals": goals,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
