"""Where the ingestion's (or the book stage's) memory goes at the whole market (issue #26): the simulator's
whole market (400 symbols, the market run's rates) -> `cryptomon ingest` under tracemalloc -> Kafka, for
SECONDS. With `--stage book`, the order book's streams are on and `cryptomon book` runs under tracemalloc
(the ingestion beside it, untraced), from its first snapshot requests to its books kept for SECONDS.

The Python heap is snapshotted every minute (bench/heap_wrapper.py) and the process's RSS sampled with it.
Reported: RSS against what tracemalloc traces (the rest is native: the interpreter, imported modules'
code, librdkafka's queue and buffers, OpenSSL), the heap's largest lines at the end, and what grew from
the first snapshot after warm-up to the last. tracemalloc costs the ingestion CPU (every allocation is
traced): the heap is the one under load, but CPU and rates here are not the ingestion's own.

    .venv/bin/python bench/ingest_heap.py [--stage ingest|book] [--seconds 480] [--symbols 400] [--out FILE]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bench_stack, emit, env_for, machine, spawn, tree_usage, wait
from e2e import _get, whole_market_load

EVERY_SECONDS = 60
WARMUP_SECONDS = 120
TOP = 12
MIB = 1 << 20
INGEST_HEALTH = ("status", "messages", "produced", "connections")


def where(stat) -> str:
    frame = stat.traceback[0]
    name = Path(frame.filename)
    parts = name.parts
    short = "/".join(parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-3:])
    return f"{short}:{frame.lineno}"


def load(path: Path) -> tracemalloc.Snapshot:
    return tracemalloc.Snapshot.load(str(path)).filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


def whole(path: Path) -> bool:
    """A snapshot written to its end (the last one may be cut short by the process's stop)."""
    try:
        load(path)
    except (EOFError, pickle.UnpicklingError):
        return False
    return True


def heap_report(folder: Path, rss_at: dict[int, int]) -> dict:
    snaps = [p for p in sorted(folder.glob("*.snap"), key=lambda p: int(p.stem)) if whole(p)]
    series = []
    for path in snaps:
        total = sum(s.size for s in load(path).statistics("filename"))
        at = int(path.stem)
        series.append({"at_s": at, "traced_mib": round(total / MIB, 1), "rss_mib": round(rss_at.get(at, 0) / MIB, 1)})
    first = next((p for p in snaps if int(p.stem) >= WARMUP_SECONDS), snaps[0])
    last = snaps[-1]
    end, start = load(last), load(first)
    top = [{"line": where(s), "mib": round(s.size / MIB, 2), "blocks": s.count} for s in end.statistics("lineno")[:TOP]]
    grew = [
        {"line": where(d), "grew_mib": round(d.size_diff / MIB, 2), "mib": round(d.size / MIB, 2)}
        for d in end.compare_to(start, "lineno")[:TOP]
        if d.size_diff > 0
    ]
    return {"series": series, "top_at_end": top, "grew": {"from_s": int(first.stem), "to_s": int(last.stem),
                                                        "lines": grew}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=480)
    ap.add_argument("--symbols", type=int, default=400)
    ap.add_argument("--stage", choices=("ingest", "book"), default="ingest")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    port, health, book_health = 39456, 39457, 39458
    book = args.stage == "book"
    logs = Path(tempfile.mkdtemp(prefix="bench-heap-"))
    snaps = logs / "snaps"
    snaps.mkdir()
    market = whole_market_load(args.symbols, "none")
    with bench_stack() as s:
        env = env_for(s, CRYPTOMON_BINANCE_WS_URL=f"ws://127.0.0.1:{port}/stream",
                      CRYPTOMON_BINANCE_REST_URL=f"http://127.0.0.1:{port}", CRYPTOMON_INGEST_HEALTH_PORT=health,
                      CRYPTOMON_SYMBOLS=market.symbols, CRYPTOMON_DEPTH="100ms" if book else "off",
                      CRYPTOMON_BOOK_HEALTH_PORT=book_health, CRYPTOMON_BOOK_START_LOOKBACK_SECONDS=0)  # fmt: skip
        cli = [sys.executable, "-m", "cryptomon"]
        sim = spawn([*cli, "feed", "sim", "--port", str(port), *market.sim], env, logs / "sim.log")
        traced = beside = None
        try:
            wait(lambda: _get(f"http://127.0.0.1:{port}/sim/stats"), 30, "the simulator", interval=0.2)
            traced = spawn([sys.executable, str(ROOT / "bench" / "heap_wrapper.py"), str(snaps), str(EVERY_SECONDS),
                            args.stage], env, logs / f"{args.stage}.log")  # fmt: skip
            if book:
                wait(lambda: (_get(f"http://127.0.0.1:{book_health}/health") or {}).get("assigned"), 60, "the book")
                beside = spawn([*cli, "ingest"], env, logs / "ingest.log")
            t0 = time.monotonic()
            rss_at: dict[int, int] = {}
            cpu0 = tree_usage(traced.pid)[0]
            while (elapsed := time.monotonic() - t0) < args.seconds + 5:
                time.sleep(1)
                if traced.poll() is not None:
                    raise RuntimeError(f"{args.stage} exited ({traced.returncode}): see {logs / f'{args.stage}.log'}")
                at = round(elapsed / EVERY_SECONDS) * EVERY_SECONDS
                if abs(elapsed - at) < 1 and at:
                    rss_at[at] = tree_usage(traced.pid)[1]
            cpu = (tree_usage(traced.pid)[0] - cpu0) / elapsed
            body = _get(f"http://127.0.0.1:{book_health if book else health}/health") or {}
        finally:
            for p in (traced, beside, sim):
                if p and p.poll() is None:
                    p.terminate()
                    p.wait(30)
    report = heap_report(snaps, rss_at)
    emit(
        {
            "benchmark": "ingest_heap" if not book else "book_heap",
            "machine": machine(),
            "symbols": args.symbols,
            "seconds": args.seconds,
            "cpu_cores_under_tracemalloc": round(cpu, 2),
            f"{args.stage}_health": body if book else {k: body.get(k) for k in INGEST_HEALTH},
            **report,
            "logs": str(logs),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
