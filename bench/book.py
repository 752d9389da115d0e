"""Order-book benchmark: the book stage's work per depth diff at the whole market, against cryptofeed's.

The records: the simulator's whole market (400 symbols, stepped in-process as `feed sim --market whole`
steps it: 1,250 steps/s and 5.4 bookTicker updates a step) for --seconds of market time, each symbol's diff
taken every 100 ms as its WebSocket sends `<symbol>@depth@100ms` (about 4,000 diffs/s, the issue's
whole-market figure), a 1,000-level snapshot of each book after its first diff, and the bookTickers in
between: all generated before anything is timed, as the Kafka records the ingestion writes.

- cryptomon: `BookKeeper`, the book stage without Kafka and the database: each record parsed (orjson) and
  validated, Binance's sync procedure, the bookTicker check, a row per symbol and second (top 20 levels)
  with its liquidity sample (the bands' sums). Timed on every record (what the stage reads) and on the
  depth records alone.
- cryptofeed (the peer): its Binance feed's own depth handler (`message_handler` -> `_book`, its books in
  the `order_book` C extension) on the combined-stream frames of the same diffs, each book built from the
  same snapshot as its `_snapshot` builds it; its book callback a no-op (no row, no check, no liquidity).

Reported: CPU µs per diff for each, the cores the market's diffs per second take (goal: the book stage
<= 0.25 core), and whether both ended with the same books (every symbol's top 20 levels). Not in it: Kafka
consumption and the database writes (bench/e2e.py --whole-market --depth runs the whole stage).

    .venv/bin/python bench/book.py [--quick] [--seconds S] [--symbols N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import zlib
from decimal import Decimal
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REAL_DATA, emit, machine

from cryptomon.binance.schema import BOOK_TICKER_EVENT, DEPTH_SNAPSHOT
from cryptomon.binance.schema import DEPTH as DEPTH_EVENT
from cryptomon.book.keeper import BookKeeper
from cryptomon.ingestion.frames import encode_snapshot
from cryptomon.simulator.engine import Simulator
from cryptomon.simulator.instruments import whole_market
from cryptomon.simulator.replay import read_captures

STEPS_PER_SECOND, BOOK_UPDATES = 1_250, 5.4  # the whole market's 400 symbols (bench/sim.py); fewer: a share
WARM_SECONDS = 2  # not timed: every book's first diff (its whole book) and its snapshot
LIMIT, LEVELS, PARTITIONS = 1_000, 20, 6
DEPTH, TICKER = "depth", "ticker"
GOAL_CORES = 0.25
MARKET_DIFFS_PER_SECOND = 4_000  # Binance's whole market: 400 books, most changing every 100 ms (the issue's)
REAL_CAPTURES = ("btcusdt_20240808.gz", "ethusdt_20240808.gz")  # hftbacktest's, with depth@100ms and a snapshot
START_MS = 1_767_225_600_000  # 2026-01-01, a fixed market clock


class Records:
    """Records in the order the book stage would read them: (topic, symbol, value) as the ingestion writes
    them, and for cryptofeed the frames the WebSocket carried (a snapshot as its REST body). Records before
    `warm` are not timed; `diffs` counts the timed ones."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ours: list[tuple[str, str, bytes]] = []
        self.frames: list[tuple[str, str, dict | None]] = []  # (symbol, frame, None) or (symbol, "", snapshot)
        self.snapped: set[str] = set()
        self.before: dict[str, list[tuple[str, str, None]]] = {}  # a book's diffs before its snapshot
        self.symbols: set[str] = set()
        self.diffs, self.warm, self.seconds = 0, (0, 0), 0.0

    def start_timing(self) -> None:
        self.warm, self.diffs = (len(self.ours), len(self.frames)), 0

    def ticker(self, symbol: str, payload: dict, ingestion_ms: int) -> None:
        self.symbols.add(symbol)
        self.ours.append((TICKER, symbol, orjson.dumps({**payload, "ingestion_timestamp": ingestion_ms})))

    def diff(self, symbol: str, payload: dict, ingestion_ms: int) -> None:
        self.symbols.add(symbol)
        self.diffs += 1
        self.ours.append((DEPTH, symbol, orjson.dumps({**payload, "ingestion_timestamp": ingestion_ms})))
        frame = orjson.dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": payload}).decode()
        # cryptofeed fetches the snapshot at a book's first diff and reads on after it (the frames wait)
        (self.frames if symbol in self.snapped else self.before.setdefault(symbol, [])).append((symbol, frame, None))

    def snapshot(self, symbol: str, body: dict, ingestion_ms: int) -> None:
        self.snapped.add(symbol)
        self.ours.append((DEPTH, symbol, encode_snapshot(symbol, body, LIMIT, ingestion_ms)))
        self.frames.append((symbol, "", body))
        self.frames += self.before.pop(symbol, [])


def simulated(size: int, seconds: float) -> Records:
    """The simulator's market for `seconds` after WARM_SECONDS, each book's snapshot after its first diff
    (the whole book)."""
    instruments = whole_market(size)
    sim = Simulator(tuple(instruments), instruments=instruments, book_updates=BOOK_UPDATES)
    out = Records(f"simulated market, {len(sim.symbols)} symbols")
    market, rng = sim.market, sim.market.rng
    due, rate = 0.0, STEPS_PER_SECOND * len(sim.symbols) / 400
    for tick in range(int((WARM_SECONDS + seconds) * 10)):
        if tick == WARM_SECONDS * 10:
            out.start_timing()
        now = START_MS + tick * 100
        due += rate / 10
        while due >= 1:
            due -= 1
            symbol = next(sim._symbol_cycle)
            tickers = [p for kind, p in market.step(symbol, now) if kind == BOOK_TICKER_EVENT]
            tickers += [market.book(symbol) for _ in range(int(BOOK_UPDATES) + (rng.random() < BOOK_UPDATES % 1))]
            for payload in tickers:
                out.ticker(symbol, payload, now)
        for symbol in sim.symbols:
            diff = sim._depth_update(symbol, now)
            if diff is not None:
                out.diff(symbol, diff, now + 1)
                if symbol not in out.snapped:  # the ingestion's snapshot after the symbol's first diff
                    out.snapshot(symbol, market.depth_snapshot(symbol, LIMIT), now + 2)
    out.seconds = seconds
    return out


def recorded(paths: list[Path]) -> Records:
    """Real Binance frames (trades left out) with the snapshot the recorder took, every record timed."""
    out = Records("real captures: " + ", ".join(p.name for p in paths))
    first = last = None
    for received, symbol, kind, payload in read_captures(paths, snapshots=True):
        at = received or 0
        first, last = first or at, at
        if isinstance(payload, dict) and payload.get("e") == DEPTH_EVENT:  # depth@100ms or depth
            out.diff(symbol, payload, at)
        elif kind == DEPTH_SNAPSHOT:
            out.snapshot(symbol, payload, at)
        elif kind == BOOK_TICKER_EVENT:
            out.ticker(symbol, payload, at)
    out.seconds = ((last or 0) - (first or 0)) / 1000
    return out


def ours(records: Records, tickers: bool) -> tuple[float, BookKeeper, int]:
    keeper = BookKeeper("binance.depth", levels=LEVELS)
    parts = {s: zlib.crc32(s.encode()) % PARTITIONS for s in records.symbols}
    rows, started = 0, 0.0
    for offset, (topic, symbol, value) in enumerate(records.ours):
        if offset == records.warm[0]:
            rows, started = 0, time.process_time()
        if topic == DEPTH:
            rows += len(keeper.on_depth(orjson.loads(value), parts[symbol], offset))
        elif tickers:
            keeper.on_ticker(orjson.loads(value), "binance.book_ticker", parts[symbol], offset)
    return time.process_time() - started, keeper, rows


def cryptofeed(records: Records) -> tuple[float, dict]:
    from cryptofeed.exchanges import Binance
    from cryptofeed.types import OrderBook

    feed = Binance.__new__(Binance)  # no __init__: it would load the symbols from Binance's REST
    feed.requires_authentication = False
    feed.id = "BINANCE"
    feed._l2_book, feed.last_update_id = {}, {}
    feed.exchange_symbol_to_std_symbol = lambda s: s

    async def no_callback(*args, **kwargs) -> None:
        return None

    feed.book_callback = no_callback

    async def run() -> float:
        started = 0.0
        for i, (symbol, frame, body) in enumerate(records.frames):
            if i == records.warm[1]:
                started = time.process_time()
            if body is None:
                await feed.message_handler(frame, None, 0.0)
            else:  # as Binance._snapshot builds it from the REST answer
                feed._l2_book[symbol] = OrderBook(feed.id, symbol, max_depth=0,
                                                  bids={Decimal(p): Decimal(q) for p, q in body["bids"]},
                                                  asks={Decimal(p): Decimal(q) for p, q in body["asks"]})  # fmt: skip
                feed.last_update_id[symbol] = body["lastUpdateId"]
        return time.process_time() - started

    return asyncio.run(run()), feed._l2_book


def same_books(keeper: BookKeeper, peer: dict) -> tuple[int, list[str]]:
    """Symbols whose top LEVELS levels agree (exact decimals), and those that do not."""
    differ = []
    for symbol, book in keeper.books.items():
        ob, theirs = book.sync.book, peer.get(symbol)
        if ob is None or theirs is None:
            differ.append(symbol)
            continue
        bids, asks = ob.top(LEVELS)
        mine = ([(Decimal(p), Decimal(q)) for p, q in bids], [(Decimal(p), Decimal(q)) for p, q in asks])
        if mine != (theirs.book.bids.to_list()[:LEVELS], theirs.book.asks.to_list()[:LEVELS]):
            differ.append(symbol)
    return len(keeper.books) - len(differ), differ


def measure(records: Records) -> dict:
    cpu_all, keeper, rows = ours(records, tickers=True)
    cpu_depth, _, _ = ours(records, tickers=False)
    cpu_peer, books = cryptofeed(records)
    agree, differ = same_books(keeper, books)
    health = keeper.health().values()

    def figures(cpu: float) -> dict:
        per_diff = cpu / records.diffs
        return {"cpu_seconds": round(cpu, 2), "us_per_diff": round(per_diff * 1e6, 1),
                "cores_at_its_rate": round(cpu / records.seconds, 3),
                "cores_at_4000_diffs_per_second": round(per_diff * MARKET_DIFFS_PER_SECOND, 3)}  # fmt: skip

    return {
        "records": {
            "name": records.name,
            "symbols": len(records.symbols),
            "seconds": round(records.seconds, 1),
            "diffs": records.diffs,
            "diffs_per_second": round(records.diffs / records.seconds),
            "records": len(records.ours) - records.warm[0],
        },
        "cryptomon_every_record": {
            **figures(cpu_all),
            "rows": rows,
            "books_synced": sum(b["synced"] for b in health),
            "bookticker_checks": sum(b["checks"] for b in health),
            "bookticker_mismatches": sum(b["mismatches"] for b in health),
        },
        "cryptomon_depth_only": figures(cpu_depth),
        "cryptofeed_book": figures(cpu_peer),
        "depth_only_to_cryptofeed": round(cpu_depth / cpu_peer, 2),
        "books_equal_to_cryptofeed": {"agree": agree, "differ": differ[:10]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 s of market time")
    ap.add_argument("--seconds", type=float, help="market time timed, after 2 s of warm-up (default 30, quick 10)")
    ap.add_argument("--symbols", type=int, default=400, help="the whole market's first N symbols, at their share")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = {"market": measure(simulated(args.symbols, args.seconds or (10 if args.quick else 30)))}
    captures = [REAL_DATA / name for name in REAL_CAPTURES]
    if all(p.exists() for p in captures):
        runs["real"] = measure(recorded(captures))
    else:
        print(f"the real captures are not in {REAL_DATA} (CRYPTOMON_REAL_DATA): the simulated market only")
    market = runs["market"]["cryptomon_every_record"]
    checked = [r["cryptomon_every_record"] for r in runs.values()]
    goals = {
        "book_stage_within_0_25_core_at_4000_diffs_per_second": market["cores_at_4000_diffs_per_second"] <= GOAL_CORES,
        "books_equal_to_cryptofeed": all(not r["books_equal_to_cryptofeed"]["differ"] for r in runs.values()),
        "no_bookticker_mismatch": all(c["bookticker_checks"] > 0 and c["bookticker_mismatches"] == 0 for c in checked),
    }
    emit({"benchmark": "book", "quick": args.quick, "machine": machine(), **runs, "goals": goals}, args.out)


if __name__ == "__main__":
    main()
