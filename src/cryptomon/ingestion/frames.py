"""Combined-stream frames in, Kafka values out: the ingestion's hot path, pure.

The Kafka message is the Binance payload itself plus `ingestion_timestamp` (epoch ms, UTC, stamped at
receipt) and, for events fetched over REST after a gap, `"backfilled": true`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import orjson

from cryptomon.binance import limits
from cryptomon.binance.orderbook import QUEUED_MAX, DepthDiff
from cryptomon.binance.payloads import Validated, decode_frame
from cryptomon.binance.schema import DEPTH, DEPTH_SNAPSHOT, SEQ_FIELD, Event, short_repr, validate_payload
from cryptomon.binance.streams import split_stream
from cryptomon.errors import BadData
from cryptomon.names import ROUTE

# a dead letter stays far below Kafka's default message limit (1 MB) whatever came in
MAX_DEAD_LETTER_RAW = 64 * 1024
MAX_DEAD_LETTER_DETAIL = 1024


@dataclass(slots=True)
class Control:
    """A frame that is not market data but that the client must act on (e.g. serverShutdown)."""

    event: str


def parse_frame(
    raw: bytes | str, symbols: frozenset[str], latest_ms: int | None = None, depth_stream: str | None = None
) -> Event | Control:
    """Parse one combined-stream frame. Raises BadData for anything that cannot be routed. `latest_ms`: the
    latest acceptable event time (the ingestion time plus the clock skew allowed); `depth_stream`: the
    depth stream followed (`depth@100ms`, `depth`), None when the book is off."""
    bound = limits.MAX_DEPTH_FRAME_BYTES if depth_stream else limits.MAX_MARKET_FRAME_BYTES
    if len(raw) > bound:
        raise BadData("frame_too_large", f"a frame of {len(raw)} bytes (at most {bound})")
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadData("not_json", str(exc)) from None
    if not isinstance(msg, dict):
        raise BadData("bad_envelope", f"frame is a JSON {type(msg).__name__}")
    stream = msg.get("stream")
    data = msg.get("data")
    if stream is None:
        # Binance's control events (e.g. {"e":"serverShutdown",...}) may come unwrapped
        event = msg.get("e") if isinstance(msg.get("e"), str) else None
        if event == "serverShutdown":
            return Control(event)
        raise BadData("bad_envelope", "frame has no 'stream'")
    if isinstance(data, dict) and data.get("e") == "serverShutdown":
        return Control("serverShutdown")
    if not isinstance(stream, str) or "@" not in stream:
        raise BadData("unknown_stream", f"stream {short_repr(stream)}")
    symbol, kind = split_stream(stream)
    if kind == depth_stream and symbol in symbols:
        diff = DepthDiff.from_payload(data, symbol, latest_ms)
        assert isinstance(data, dict)  # from_payload raised otherwise
        return Event(DEPTH, symbol, diff.final_id, data)
    if kind not in ROUTE or symbol not in symbols:
        raise BadData("unknown_stream", f"stream {short_repr(stream)} is not subscribed")
    if len(raw) > limits.MAX_MARKET_FRAME_BYTES:
        raise BadData("frame_too_large", f"a frame of {len(raw)} bytes (at most {limits.MAX_MARKET_FRAME_BYTES})")
    validate_payload(kind, data, symbol, latest_ms)
    assert isinstance(data, dict)  # validate_payload raised otherwise
    return Event(kind, symbol, data[SEQ_FIELD[kind]], data)


def route(
    raw: bytes | str, symbols: frozenset[str], latest_ms: int, depth_stream: str | None = None
) -> Validated | Event | Control:
    """The frame's event by the typed path in C (binance/payloads.py) or, for what that cannot say, by the
    contract (parse_frame), which accepts it too or raises BadData with the reason."""
    return decode_frame(raw, symbols, latest_ms, depth_stream) or parse_frame(raw, symbols, latest_ms, depth_stream)


def encode(event: Event | Validated, ingestion_ms: int, backfilled: bool = False) -> bytes:
    """The Kafka message value: Binance's payload + ingestion_timestamp (+ backfilled)."""
    if isinstance(event, Validated):  # the payload's bytes as the exchange sent them (never backfilled)
        return event.value(ingestion_ms)
    data = event.data
    data["ingestion_timestamp"] = ingestion_ms
    if backfilled:
        data["backfilled"] = True
    elif "backfilled" in data:  # only cryptomon says so: not a field a frame can bring in
        del data["backfilled"]
    return orjson.dumps(data)


def encode_snapshot(symbol: str, body: dict, limit: int, ingestion_ms: int, queued: Iterable[str] = ()) -> bytes:
    """The depth topic's record of an /api/v3/depth answer the ingestion used: Binance's body (lastUpdateId,
    bids, asks) with the symbol, the depth asked, the ingestion timestamp, and the books this ingestion is
    still fetching a snapshot for (oldest first, at most QUEUED_MAX), so that a book stage does not ask for
    them."""
    return orjson.dumps(
        {"e": DEPTH_SNAPSHOT, "s": symbol, "lastUpdateId": body["lastUpdateId"], "bids": body["bids"],
         "asks": body["asks"], "limit": limit, "ingestion_timestamp": ingestion_ms,
         "queued": list(islice(queued, QUEUED_MAX))}
    )  # fmt: skip


def dead_letter_value(raw: str | bytes, reason: str, detail: str, ingestion_ms: int) -> bytes:
    """The dead-letter topic's value for a frame that cannot be routed: the reason, the detail, the frame as
    text (cut to MAX_DEAD_LETTER_RAW characters, so that Kafka never refuses it) and its original size."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    return orjson.dumps(
        {
            "source": "ingestion",
            "reason": reason,
            "detail": detail[:MAX_DEAD_LETTER_DETAIL],
            "raw": text[:MAX_DEAD_LETTER_RAW],
            "raw_bytes": len(raw),
            "truncated": len(text) > MAX_DEAD_LETTER_RAW,
            "ingestion_timestamp": ingestion_ms,
        }
    )


def is_reply(raw: str | bytes) -> bool:
    """{"result": .., "id": ..} or {"error": .., "id": ..}: the exchange's answer to a live request."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(d, dict) and "id" in d and ("result" in d or "error" in d)
