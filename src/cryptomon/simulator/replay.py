"""Recorded feeds: `cryptomon feed record` captures a live stream, `cryptomon feed replay` reads captures
(its own JSON lines, hftbacktest's, cryptofeed's, Binance's CSV dumps: docs/design.md) and serves them.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import heapq
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast
from urllib.parse import parse_qs, urlsplit

import orjson

from cryptomon.binance.schema import DEPTH_SNAPSHOT, SEQ_FIELD
from cryptomon.binance.streams import split_stream
from cryptomon.errors import BadData, ConfigError

log = logging.getLogger(__name__)
_CSV_NAME = re.compile(r"^([A-Z0-9]+)-(trades|aggTrades)-", re.IGNORECASE)

Item = tuple[str, str, dict]  # (symbol, kind, payload)
Timed = tuple[int | None, str, str, dict]  # (receive time ms or None, symbol, kind, payload)


def _ms(value: str) -> int:
    t = int(value)
    return t // 1000 if t > 10**14 else t  # microseconds -> ms


def _bool(value: str) -> bool:
    return value.strip().lower() in ("true", "1")


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return cast(IO[bytes], gzip.open(path, "rb")) if gz else open(path, "rb")


def _frame(msg: object) -> tuple[str, str, dict] | None:
    """(symbol, kind, data) of a parsed combined-stream frame; None for any other JSON value."""
    if not isinstance(msg, dict) or "stream" not in msg:
        return None
    stream, data = msg["stream"], msg["data"]
    symbol, kind = split_stream(stream)
    return symbol, kind, data


# cryptofeed's recorder writes a REST answer as "<url> -> <seconds>: <body>"
_REST_LINE = re.compile(rb"^(https?://\S+) -> ([0-9.]+): (.*)$", re.DOTALL)


def read_timed(path: Path, snapshots: bool = False) -> Iterator[Timed]:
    """Any of the line formats, with the receive time where the capture has one. With `snapshots`, the
    /api/v3/depth answers the recorder fetched come too, as (received, symbol, DEPTH_SNAPSHOT, body):
    hftbacktest's (a JSON line without `stream`, of the file's one symbol) and cryptofeed's REST lines."""
    skipped = 0
    symbols: set[str] = set()
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or (lineno == 1 and line.startswith((b"wss://", b"ws://"))):
                continue  # cryptofeed's first line: the URL it opened
            received: int | None = None
            try:
                if rest_line := _REST_LINE.match(line):
                    received = int(float(rest_line[2]) * 1000)
                    url = urlsplit(rest_line[1].decode())
                    query = parse_qs(url.query)
                    body = orjson.loads(rest_line[3])
                    item = _snapshot(body, query.get("symbol", [None])[0]) if url.path.endswith("/depth") else None
                elif line.startswith(b"{"):  # JSON lines (feed record)
                    msg = orjson.loads(line)
                    item = _frame(msg)
                    received = msg.get("received_at") if item else None
                else:
                    head, _, rest = line.partition(b" ")
                    if head.endswith(b":"):  # cryptofeed: "<seconds>: <frame>"
                        received = int(float(head[:-1]) * 1000)
                    else:  # hftbacktest: "<ns> <frame>"
                        received = int(head) // 1_000_000
                    msg = orjson.loads(rest)
                    item = _frame(msg) or _snapshot(msg, next(iter(symbols)) if len(symbols) == 1 else None)
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
                raise BadData("bad_capture", f"{path}:{lineno}: not a combined-stream frame ({exc})") from None
            if item is None or (item[1] == DEPTH_SNAPSHOT and not snapshots):
                skipped += 1
                continue
            symbols.add(item[0])
            yield (received, *item)
    if skipped:
        log.info("%s: skipped %d lines that are not stream frames", path.name, skipped)


def _snapshot(body: object, symbol: str | None) -> Item | None:
    """A recorded /api/v3/depth answer as an item, when it is one and its symbol is known."""
    if not isinstance(body, dict) or "lastUpdateId" not in body or not symbol:
        return None
    return symbol.upper(), DEPTH_SNAPSHOT, body


def read_csv(path: Path, symbol: str | None = None) -> Iterator[Item]:
    m = _CSV_NAME.match(path.name)
    if not m and not symbol:
        raise ConfigError(f"{path.name}: cannot tell the symbol; name it SYMBOL-trades-*.csv / SYMBOL-aggTrades-*.csv")
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


def read_captures(
    paths: list[Path], symbol: str | None = None, shift_ms: int = 0, snapshots: bool = False
) -> Iterator[Timed]:
    """Several captures merged by receive time (CSV dumps by trade time), event times (`E`, `T`) moved by
    `shift_ms`; with `snapshots`, the depth snapshots recorded in them too (read_timed)."""

    def timed(path: Path) -> Iterator[Timed]:
        if path.suffix.lower() == ".csv":
            return ((d["T"], sym, kind, d) for sym, kind, d in read_csv(path, symbol))
        return read_timed(path, snapshots)

    for received, sym, kind, data in heapq.merge(*(timed(p) for p in paths), key=lambda x: x[0] or 0):
        if shift_ms and isinstance(data, dict):
            data = dict(data)
            for field in ("E", "T"):
                if isinstance(data.get(field), int):
                    data[field] += shift_ms
        yield received, sym, kind, data


def first_event_ms(paths: list[Path], symbol: str | None = None) -> int | None:
    """The earliest event time (`E`, else `T`) among the captures' first 1,000 frames each."""
    times = []
    for path in paths:
        for n, (_, _, _, data) in enumerate(read_captures([path], symbol)):
            t = data.get("E", data.get("T")) if isinstance(data, dict) else None
            if isinstance(t, int):
                times.append(t)
            if n >= 1000:
                break
    return min(times, default=None)


def shift_to_now(first_ms: int | None, now_ms: int) -> int:
    """Whole minutes that bring `first_ms` into the current minute: windows keep their content (pure)."""
    if first_ms is None:
        return 0
    return (now_ms // 60_000 - first_ms // 60_000) * 60_000


class ReplayHistory:
    """What was replayed so far, served by the REST endpoints (backfill) like the live market's history."""

    def __init__(self, first_snapshots: dict[str, dict] | None = None) -> None:
        self.trades: dict[str, list[dict]] = {}
        self.aggs: dict[str, list[dict]] = {}
        self.symbols: set[str] = set()
        self.first_snapshots = first_snapshots or {}
        self.snapshots: dict[str, dict] = {}  # the latest recorded depth snapshot the replay has reached

    def add(self, symbol: str, kind: str, payload: dict) -> None:
        self.symbols.add(symbol)
        if kind == DEPTH_SNAPSHOT:
            self.snapshots[symbol] = payload
        elif kind == "trade":
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

    def depth(self, symbol: str, limit: int) -> dict | None:
        """/api/v3/depth as it was recorded: the latest snapshot the replay has reached, or before the replay
        reaches the first one, that one (a client syncing then buffers the diffs until they bridge it), cut
        to `limit` levels a side; None when the capture recorded none for the symbol."""
        body = self.snapshots.get(symbol) or self.first_snapshots.get(symbol)
        if body is None:
            return None
        return {"lastUpdateId": body["lastUpdateId"], "bids": body["bids"][:limit], "asks": body["asks"][:limit]}


def first_snapshots(paths: list[Path], symbol: str | None = None) -> dict[str, dict]:
    """The first depth snapshot recorded per symbol in the captures."""
    found: dict[str, dict] = {}
    for path in paths:
        if path.suffix.lower() == ".csv":
            continue
        for _, sym, kind, body in read_timed(path, snapshots=True):
            if kind == DEPTH_SNAPSHOT and (symbol is None or sym == symbol):
                found.setdefault(sym, body)
    return found


def capture_symbols(paths: list[Path], symbol: str | None = None) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for _, sym, _, _ in read_captures(paths, symbol):
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
