"""Combined-stream frames in, Kafka values out: the ingestion's hot path, pure.

The Kafka message is the Binance payload itself plus `ingestion_timestamp` (epoch ms, UTC, stamped at
receipt) and, for events fetched over REST after a gap, `"backfilled": true`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from cryptomon.binance import limits
from cryptomon.binance.schema import SEQ_FIELD, Event, short_repr, validate_payload
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


def parse_frame(raw: bytes | str, symbols: frozenset[str], latest_ms: int | None = None) -> Event | Control:
    """Parse one combined-stream frame. Raises BadData for anything that cannot be routed. `latest_ms`: the
    latest acceptable event time (the ingestion time plus the clock skew allowed)."""
    if len(raw) > limits.MAX_MARKET_FRAME_BYTES:
        raise BadData("frame_too_large", f"a frame of {len(raw)} bytes (at most {limits.MAX_MARKET_FRAME_BYTES})")
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
    if kind not in ROUTE or symbol not in symbols:
        raise BadData("unknown_stream", f"stream {short_repr(stream)} is not subscribed")
    validate_payload(kind, data, symbol, latest_ms)
    assert isinstance(data, dict)  # validate_payload raised otherwise
    return Event(kind, symbol, data[SEQ_FIELD[kind]], data)


def encode(event: Event, ingestion_ms: int, backfilled: bool = False) -> bytes:
    """The Kafka message value: Binance's payload + ingestion_timestamp (+ backfilled)."""
    data = event.data
    data["ingestion_timestamp"] = ingestion_ms
    if backfilled:
        data["backfilled"] = True
    elif "backfilled" in data:  # only cryptomon says so: not a field a frame can bring in
        del data["backfilled"]
    return orjson.dumps(data)


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
