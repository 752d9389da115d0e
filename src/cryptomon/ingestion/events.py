"""Pure logic of the ingestion: parse Binance combined-stream frames, validate, route, track ids.

Binance payloads (spot, documented):
  trade      {"e":"trade","E":ms,"s":"BTCUSDT","t":id,"p":"price","q":"qty","T":ms,"m":bool,"M":bool}
  aggTrade   {"e":"aggTrade","E":ms,"s":..,"a":id,"p":..,"q":..,"f":firstId,"l":lastId,"T":ms,"m":bool,"M":bool}
  bookTicker {"u":updateId,"s":..,"b":bid,"B":bidQty,"a":ask,"A":askQty}           (no event time)
wrapped as {"stream":"btcusdt@trade","data":{...}}.

The Kafka message is the Binance payload itself plus `ingestion_timestamp` (epoch ms, UTC, stamped at
receipt) and, for events fetched over REST after a gap, `"backfilled": true`.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import NoReturn

import orjson

from cryptomon import binance
from cryptomon.names import AGG_TRADE, BOOK_TICKER_EVENT, KINDS, ROUTE, SEQ_FIELD, TRADE

log = logging.getLogger("cryptomon.ingestion")


# prices fit DECIMAL(16,8), quantities DECIMAL(20,8) (the raw tables' NUMERIC(20,8)): see binance.py
_PRICE = re.compile(rf"^\d{{1,{binance.PRICE_INTEGER_DIGITS}}}(\.\d{{1,{binance.DECIMALS}}})?$")
_QUANTITY = re.compile(rf"^\d{{1,{binance.QUANTITY_INTEGER_DIGITS}}}(\.\d{{1,{binance.DECIMALS}}})?$")
_REQUIRED = {
    TRADE: (("t", int), ("p", str), ("q", str), ("T", int), ("m", bool)),
    AGG_TRADE: (("a", int), ("p", str), ("q", str), ("f", int), ("l", int), ("T", int), ("m", bool)),
    BOOK_TICKER_EVENT: (("u", int), ("b", str), ("B", str), ("a", str), ("A", str)),
}
_DECIMALS = {
    TRADE: (("p", _PRICE), ("q", _QUANTITY)),
    AGG_TRADE: (("p", _PRICE), ("q", _QUANTITY)),
    BOOK_TICKER_EVENT: (("b", _PRICE), ("B", _QUANTITY), ("a", _PRICE), ("A", _QUANTITY)),
}


class BadFrame(ValueError):
    """Input that cannot be routed; `reason` is a short machine-friendly label for metrics."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Event:
    kind: str  # trade | aggTrade | bookTicker
    symbol: str
    seq: int  # t, a or u
    data: dict


@dataclass(slots=True)
class Control:
    """A frame that is not market data but that the client must act on (e.g. serverShutdown)."""

    event: str


def stream_names(symbols: tuple[str, ...]) -> list[str]:
    return [f"{s.lower()}@{kind}" for s in symbols for kind in KINDS]


def combined_stream_url(base_url: str, symbols: tuple[str, ...]) -> str:
    return f"{base_url}?streams={'/'.join(stream_names(symbols))}"


def validate_payload(kind: str, data: object, symbol: str | None = None) -> str:
    """Check a Binance payload of `kind`; returns its symbol. Raises BadFrame.

    Every message goes through here twice (ingestion and worker), so the common case is one pass of
    exact-type checks (JSON parsers make exact types; `type(v) is int` also refuses a bool) and the
    error messages are built only on the way out."""
    if type(data) is not dict:
        raise BadFrame("bad_payload", f"data is {type(data).__name__}, not an object")
    s = data.get("s")
    if type(s) is not str or (symbol is not None and s != symbol):
        raise BadFrame("bad_symbol", f"symbol {s!r} does not match stream symbol {symbol!r}")
    if kind != BOOK_TICKER_EVENT and data.get("e") != kind:
        raise BadFrame("bad_event_type", f"event type {data.get('e')!r} on a {kind} stream")
    for name, expected in _REQUIRED[kind]:
        if type(data.get(name)) is not expected:
            _wrong_field(kind, name, data.get(name), expected)
    for name, pattern in _DECIMALS[kind]:
        if pattern.fullmatch(data[name]) is None:  # not match: "$" also matches before a final newline
            _bad_decimal(kind, name, data[name], pattern)
    return s


def _wrong_field(kind: str, name: str, value: object, expected: type) -> NoReturn:
    if value is None:
        raise BadFrame("missing_field", f"{kind} without field {name!r}")
    raise BadFrame("wrong_type", f"{kind} field {name!r} is {type(value).__name__}, expected {expected.__name__}")


def _bad_decimal(kind: str, name: str, value: str, pattern: re.Pattern) -> NoReturn:
    what = "price" if pattern is _PRICE else "quantity"
    digits = binance.PRICE_INTEGER_DIGITS if pattern is _PRICE else binance.QUANTITY_INTEGER_DIGITS
    raise BadFrame(
        "bad_decimal",
        f"{kind} field {name!r}={value!r} is not a {what} of at most {digits} integer digits "
        f"and {binance.DECIMALS} decimals",
    )


def parse_frame(raw: bytes | str, symbols: frozenset[str]) -> Event | Control:
    """Parse one combined-stream frame. Raises BadFrame for anything that cannot be routed."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadFrame("not_json", str(exc)) from None
    if not isinstance(msg, dict):
        raise BadFrame("bad_envelope", f"frame is a JSON {type(msg).__name__}")
    stream = msg.get("stream")
    data = msg.get("data")
    if stream is None:
        # Binance's control events (e.g. {"e":"serverShutdown",...}) may come unwrapped
        event = msg.get("e") if isinstance(msg.get("e"), str) else None
        if event == "serverShutdown":
            return Control(event)
        raise BadFrame("bad_envelope", "frame has no 'stream'")
    if isinstance(data, dict) and data.get("e") == "serverShutdown":
        return Control("serverShutdown")
    if not isinstance(stream, str) or "@" not in stream:
        raise BadFrame("unknown_stream", f"stream {stream!r}")
    sym, _, kind = stream.partition("@")
    symbol = sym.upper()
    if kind not in ROUTE or symbol not in symbols:
        raise BadFrame("unknown_stream", f"stream {stream!r} is not subscribed")
    validate_payload(kind, data, symbol)
    assert isinstance(data, dict)  # validate_payload raised otherwise
    return Event(kind, symbol, data[SEQ_FIELD[kind]], data)


def encode(event: Event, ingestion_ms: int, backfilled: bool = False) -> bytes:
    """The Kafka message value: Binance's payload + ingestion_timestamp (+ backfilled)."""
    data = event.data
    data["ingestion_timestamp"] = ingestion_ms
    if backfilled:
        data["backfilled"] = True
    return orjson.dumps(data)


# ------------------------------------------------------------------ REST (backfill) payloads


def trade_from_rest(symbol: str, row: dict) -> Event:
    """/api/v3/historicalTrades row -> a trade stream payload."""
    data = {
        "e": TRADE,
        "E": row["time"],
        "s": symbol,
        "t": row["id"],
        "p": row["price"],
        "q": row["qty"],
        "T": row["time"],
        "m": row["isBuyerMaker"],
        "M": row.get("isBestMatch", True),
    }
    validate_payload(TRADE, data, symbol)
    return Event(TRADE, symbol, data["t"], data)


def agg_trade_from_rest(symbol: str, row: dict) -> Event:
    """/api/v3/aggTrades row (same letters as the stream) -> an aggTrade stream payload."""
    data = {
        "e": AGG_TRADE,
        "E": row["T"],
        "s": symbol,
        "a": row["a"],
        "p": row["p"],
        "q": row["q"],
        "f": row["f"],
        "l": row["l"],
        "T": row["T"],
        "m": row["m"],
        "M": row.get("M", True),
    }
    validate_payload(AGG_TRADE, data, symbol)
    return Event(AGG_TRADE, symbol, data["a"], data)


# ------------------------------------------------------------------ sequence tracking

NEW, DUPLICATE, LATE = "new", "duplicate", "late"


@dataclass
class _Seq:
    last: int
    # missing ids as sorted, disjoint, inclusive [start, end] intervals, with the time each was found
    gaps: list[list[int]] = field(default_factory=list)
    found_at: dict[int, float] = field(default_factory=dict)  # gap start -> monotonic time found
    resumed: bool = False  # `last` comes from a previous run (read back from Kafka), not from this stream


class SequenceTracker:
    """Per (symbol, kind) consecutive-id tracking for trade (`t`) and aggTrade (`a`) ids.

    observe() says whether an id is new, a duplicate (drop it) or a late arrival that fills a gap.
    Gaps (ids skipped by the stream) stay pending until filled by late arrivals or a backfill.
    """

    def __init__(self, max_resume_gap: int = 1_000_000) -> None:
        self._seqs: dict[tuple[str, str], _Seq] = {}
        self.max_resume_gap = max_resume_gap
        self.gaps_found = 0
        self.ids_missed = 0
        self.baseline_resets = 0
        self.resume_ids_skipped = 0  # ids between a previous run and this one too many to backfill

    def last(self, key: tuple[str, str]) -> int | None:
        s = self._seqs.get(key)
        return s.last if s else None

    def seed(self, key: tuple[str, str], last: int, gaps: list[list[int]] | None = None) -> None:
        """Start from a known last id (recovered from a previous run) instead of the first one seen: the ids
        between it and the first one seen become a gap to backfill, as do the previous run's open `gaps`."""
        s = self._seqs.setdefault(key, _Seq(last, resumed=True))
        for start, end in sorted(gaps or []):
            if start <= end <= last and not any(g[0] <= end and start <= g[1] for g in s.gaps):
                s.gaps.append([start, end])
                s.found_at[start] = 0.0  # due at once
                self.ids_missed += end - start + 1
        s.gaps.sort()

    def state(self) -> dict[tuple[str, str], tuple[int, list[list[int]]]]:
        """Where each stream stands: its last id and its open gaps (copies)."""
        return {key: (s.last, [list(g) for g in s.gaps]) for key, s in self._seqs.items()}

    def observe(self, key: tuple[str, str], seq: int, now: float = 0.0) -> str:
        s = self._seqs.get(key)
        if s is None:
            self._seqs[key] = _Seq(seq)
            return NEW
        if s.resumed:
            s.resumed = False
            if seq <= s.last or seq - s.last - 1 > self.max_resume_gap:
                # a fresh connection streams only new trades: ids at or below the previous run's last one
                # mean they started over (a restarted simulator, another exchange); a gap beyond the limit
                # is another exchange or a downtime too long to backfill
                if seq > s.last:
                    self.resume_ids_skipped += seq - s.last - 1
                log.warning(
                    "%s %s: first id %d after %d in the previous run: %s",
                    key[0],
                    key[1],
                    seq,
                    s.last,
                    "ids started over, not resuming"
                    if seq <= s.last
                    else f"{seq - s.last - 1} ids missed, more than CRYPTOMON_RESUME_MAX_GAP: not backfilled",
                )
                self.baseline_resets += 1
                self._seqs[key] = _Seq(seq)
                return NEW
        if seq == s.last + 1:
            s.last = seq
            return NEW
        if seq > s.last:
            s.gaps.append([s.last + 1, seq - 1])
            s.found_at[s.last + 1] = now
            self.gaps_found += 1
            self.ids_missed += seq - 1 - s.last
            s.last = seq
            return NEW
        return LATE if self._take(s, seq) else DUPLICATE

    def _take(self, s: _Seq, seq: int) -> bool:
        """Remove seq from the pending gaps; True if it was missing."""
        i = bisect_right(s.gaps, [seq, float("inf")]) - 1
        if i < 0:
            return False
        start, end = s.gaps[i]
        if not start <= seq <= end:
            return False
        found = s.found_at.pop(start, 0.0)
        pieces = [p for p in ([start, seq - 1], [seq + 1, end]) if p[0] <= p[1]]
        s.gaps[i : i + 1] = pieces
        for p in pieces:
            s.found_at[p[0]] = found
        return True

    def fill(self, key: tuple[str, str], seq: int) -> bool:
        s = self._seqs.get(key)
        return s is not None and self._take(s, seq)

    def drop_gap(self, key: tuple[str, str], start: int, end: int) -> int:
        """Give up on [start, end] (cannot be filled); returns how many ids were still missing."""
        s = self._seqs[key]
        dropped = 0
        kept = []
        for g in s.gaps:
            lo, hi = max(g[0], start), min(g[1], end)
            if lo > hi:
                kept.append(g)
                continue
            dropped += hi - lo + 1
            found = s.found_at.pop(g[0], 0.0)
            for p in ([g[0], lo - 1], [hi + 1, g[1]]):
                if p[0] <= p[1]:
                    kept.append(p)
                    s.found_at[p[0]] = found
        s.gaps = sorted(kept)
        return dropped

    def pending(self, older_than: float | None = None) -> list[tuple[tuple[str, str], int, int]]:
        """Pending gaps as (key, start, end), optionally only those found before `older_than`."""
        out = []
        for key, s in self._seqs.items():
            for start, end in s.gaps:
                if older_than is None or s.found_at.get(start, 0.0) <= older_than:
                    out.append((key, start, end))
        return out

    def found_at(self, key: tuple[str, str], start: int) -> float:
        """When the gap starting at `start` was found (monotonic), 0.0 if unknown."""
        s = self._seqs.get(key)
        return s.found_at.get(start, 0.0) if s else 0.0

    def missing_count(self) -> int:
        return sum(end - start + 1 for _, start, end in self.pending())


class RecentIds:
    """Bounded memory of recently seen ids, to drop exact duplicates of bookTicker updates."""

    def __init__(self, size: int = 4096):
        self._order: deque[int] = deque(maxlen=size)
        self._set: set[int] = set()

    def seen(self, value: int) -> bool:
        if value in self._set:
            return True
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(value)
        self._set.add(value)
        return False
