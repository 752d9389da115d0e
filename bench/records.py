"""Record-validation benchmark: the worker's per-record work (a Kafka value -> its row, every check of the
contract) by the typed decoding in C (binance/records.py, msgspec) against the contract alone (orjson +
validate_payload in Python, the worker's path before it), and against orjson.loads alone (parsing the
JSON and nothing else: what any validator must at least pay).

The records: the real BTCUSDT/ETHUSDT captures' trades and bookTickers, as the ingestion writes them to
Kafka (payload + ingestion_timestamp), each parser run over all of them, best of --rounds. Both paths must
give the same rows (checked). Reported: µs per record for each, the typed path's speed-up, and the worker's
cores at the whole market's ~11,000 records/s for the validation alone.

    .venv/bin/python bench/records.py [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REAL_DATA, emit, machine

from cryptomon.binance.schema import BOOK_TICKER_EVENT, SEQ_FIELD, TRADE, Event
from cryptomon.ingestion.frames import encode
from cryptomon.simulator.replay import read_timed
from cryptomon.worker.rows import book_row, contract_book_row, contract_trade_row, trade_row

CAPTURES = ("btcusdt_20240808.gz", "ethusdt_20240808.gz")
MARKET_RECORDS_PER_SECOND = 11_000  # the whole market's trades + bookTickers (docs/benchmarks.md, market run)


def records() -> list[tuple[str, bytes, int]]:
    out = []
    for name in CAPTURES:
        for _, symbol, kind, data in read_timed(REAL_DATA / name):
            if kind in (TRADE, BOOK_TICKER_EVENT):
                ingestion_ms = data.get("E", 1_723_075_200_000) + 3
                out.append((kind, encode(Event(kind, symbol, data[SEQ_FIELD[kind]], data), ingestion_ms), ingestion_ms))
    return out


def best_us(parse, rows: list[tuple[str, bytes, int]], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for kind, value, latest in rows:
            parse(kind, value, latest)
        best = min(best, time.process_time() - start)
    return best / len(rows) * 1e6


def typed(kind: str, value: bytes, latest: int):
    return book_row(value, latest) if kind == BOOK_TICKER_EVENT else trade_row(value, latest)


def contract(kind: str, value: bytes, latest: int):
    return contract_book_row(value, latest) if kind == BOOK_TICKER_EVENT else contract_trade_row(value, latest)


def parse_only(kind: str, value: bytes, latest: int):
    return orjson.loads(value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not all((REAL_DATA / name).exists() for name in CAPTURES):
        sys.exit(f"the real captures are not in {REAL_DATA} (set CRYPTOMON_REAL_DATA)")
    rows = records()
    same = all(typed(*r) == contract(*r) for r in rows)
    us = {
        name: round(best_us(f, rows, args.rounds), 3)
        for name, f in (("typed", typed), ("contract", contract), ("orjson_loads", parse_only))
    }
    emit(
        {
            "benchmark": "records",
            "machine": machine(),
            "records": len(rows),
            "same_rows": same,
            "us_per_record": us,
            "typed_speedup": round(us["contract"] / us["typed"], 2),
            "cores_at_market": {k: round(v * MARKET_RECORDS_PER_SECOND / 1e6, 3) for k, v in us.items()},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
