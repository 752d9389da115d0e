"""Recorded feeds: `cryptomon feed record` captures a live stream, `cryptomon feed replay` serves one.

Accepted inputs for replay:
  * JSON lines as written by `feed record`: {"stream": "btcusdt@trade", "data": {...}, "received_at": ms}
    (the "received_at" field is optional, so any capture of raw combined-stream frames works);
  * Binance's public dumps (data.binance.vision), CSV with or without a header row:
      <SYMBOL>-trades-*.csv     id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch
      <SYMBOL>-aggTrades-*.csv  aggTradeId,price,qty,firstTradeId,lastTradeId,time,isBuyerMaker,isBestMatch
    Times in microseconds (Binance's spot dumps since 2025) are converted to milliseconds.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from cryptomon.names import SEQ_FIELD

log = logging.getLogger(__name__)
_CSV_NAME = re.compile(r"^([A-Z0-9]+)-(trades|aggTrades)-", re.IGNORECASE)

Item = tuple[str, str, dict]  # (symbol, kind, payload)


def _ms(value: str) -> int:
    t = int(value)
    return t // 1000 if t > 10**14 else t  # microseconds -> ms


def _bool(value: str) -> bool:
    return value.strip().lower() in ("true", "1")


def read_jsonl(path: Path) -> Iterator[Item]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                msg = orjson.loads(line)
                stream, data = msg["stream"], msg["data"]
                symbol, _, kind = stream.partition("@")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a combined-stream frame ({exc})") from None
            yield symbol.upper(), kind, data


def read_csv(path: Path, symbol: str | None = None) -> Iterator[Item]:
    m = _CSV_NAME.match(path.name)
    if not m and not symbol:
        raise ValueError(f"{path.name}: cannot tell the symbol; name it SYMBOL-trades-*.csv / SYMBOL-aggTrades-*.csv")
    symbol = (symbol or (m.group(1) if m else "")).upper()
    kind = "aggTrade" if (m and m.group(2).lower() == "aggtrades") else "trade"
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or not row[0].strip().isdigit():
                continue  # header
            if kind == "trade":
                t = _ms(row[4])
                yield (
                    symbol,
                    kind,
                    {
                        "e": "trade",
                        "E": t,
                        "s": symbol,
                        "t": int(row[0]),
                        "p": row[1],
                        "q": row[2],
                        "T": t,
                        "m": _bool(row[5]),
                        "M": _bool(row[6]) if len(row) > 6 else True,
                    },
                )
            else:
                t = _ms(row[5])
                yield (
                    symbol,
                    kind,
                    {
                        "e": "aggTrade",
                        "E": t,
                        "s": symbol,
                        "a": int(row[0]),
                        "p": row[1],
                        "q": row[2],
                        "f": int(row[3]),
                        "l": int(row[4]),
                        "T": t,
                        "m": _bool(row[6]),
                        "M": _bool(row[7]) if len(row) > 7 else True,
                    },
                )


def read_capture(path: Path, symbol: str | None = None) -> Iterator[Item]:
    return read_csv(path, symbol) if path.suffix.lower() == ".csv" else read_jsonl(path)


class ReplayHistory:
    """What was replayed so far, served by the REST endpoints (backfill) like the live market's history."""

    def __init__(self) -> None:
        self.trades: dict[str, list[dict]] = {}
        self.aggs: dict[str, list[dict]] = {}
        self.symbols: set[str] = set()

    def add(self, symbol: str, kind: str, payload: dict) -> None:
        self.symbols.add(symbol)
        if kind == "trade":
            self.trades.setdefault(symbol, []).append(payload)
        elif kind == "aggTrade":
            self.aggs.setdefault(symbol, []).append(payload)

    @staticmethod
    def _from(rows: list[dict], key: str, from_id: int | None, limit: int) -> list[dict]:
        if from_id is None:
            return rows[-limit:]
        lo, hi = 0, len(rows)
        while lo < hi:  # ids are increasing: binary search
            mid = (lo + hi) // 2
            if rows[mid][key] < from_id:
                lo = mid + 1
            else:
                hi = mid
        return rows[lo : lo + limit]

    def trades_from(self, symbol: str, from_id: int | None, limit: int) -> list[dict]:
        return [
            {
                "id": t["t"],
                "price": t["p"],
                "qty": t["q"],
                "time": t["T"],
                "isBuyerMaker": t["m"],
                "isBestMatch": t.get("M", True),
            }
            for t in self._from(self.trades.get(symbol, []), "t", from_id, limit)
        ]

    def aggs_from(self, symbol: str, from_id: int | None, limit: int) -> list[dict]:
        return [
            {k: a[k] for k in ("a", "p", "q", "f", "l", "T", "m")} | {"M": a.get("M", True)}
            for a in self._from(self.aggs.get(symbol, []), "a", from_id, limit)
        ]


def capture_symbols(path: Path, symbol: str | None = None) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for sym, _, _ in read_capture(path, symbol):
        seen.setdefault(sym, None)
    return tuple(seen)


async def record(url: str, out: Path, max_messages: int | None = None, seconds: float | None = None) -> int:
    """Write every combined-stream frame from `url` to `out` as JSON lines; returns how many."""
    from websockets.asyncio.client import connect

    count = 0
    deadline = time.monotonic() + seconds if seconds else None
    with open(out, "ab") as f:  # noqa: ASYNC230 - opened once, before the stream; appends are buffered
        async with connect(url, max_size=1 << 20) as ws:
            while max_messages is None or count < max_messages:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout)
                except TimeoutError:
                    break
                msg = orjson.loads(raw)
                if not isinstance(msg, dict) or "stream" not in msg:
                    continue
                msg["received_at"] = time.time_ns() // 1_000_000
                f.write(orjson.dumps(msg) + b"\n")
                count += 1
    log.info("recorded %d frames to %s", count, out)
    return count


def seq_of(kind: str, payload: dict) -> int:
    return payload[SEQ_FIELD[kind]]
