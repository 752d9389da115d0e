"""Snapshot requests, from the book stage to the ingestion (topic binance.depth_requests, keyed by symbol).

The ingestion fetches a book's snapshot when its diff stream needs one (the first diff, a gap). A book
stage may need one when the ingestion does not: it started after the snapshot went by (a new consumer
group, a lookback shorter than the time since), or its book disagrees with Binance's bookTicker (a
mismatch: the book resyncs). It then asks; the ingestion that follows the symbol fetches a snapshot newer
than the diffs it sent, through its REST budget, and puts it into binance.depth like any other. A request
is a wish, not an order: the ingestion honours at most one per symbol per `REQUEST_COOLDOWN_SECONDS` (the
ones within it make one more at its end) and none for a symbol it does not follow, so a flood of records
written into the topic costs at most one snapshot per followed symbol per cooldown.
"""

from __future__ import annotations

import orjson

from cryptomon.binance.schema import SYMBOL, short_repr
from cryptomon.errors import BadData

WAITING, MISMATCH = "waiting", "mismatch"  # a book that waits for a snapshot; one the bookTicker contradicts
REASONS = (WAITING, MISMATCH)
REQUEST_COOLDOWN_SECONDS = 10.0  # the ingestion's: at most one snapshot per symbol asked in that time
MAX_REQUEST_BYTES = 200


def request_value(symbol: str, reason: str, now_ms: int) -> bytes:
    return orjson.dumps({"s": symbol, "reason": reason, "requested_at": now_ms})


def parse_request(raw: bytes | None) -> tuple[str, str]:
    """(symbol, reason) of a request record, or BadData."""
    if raw is None or len(raw) > MAX_REQUEST_BYTES:
        raise BadData("bad_depth_request", f"a request of {len(raw or b'')} bytes")
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadData("bad_depth_request", f"not JSON: {short_repr(raw)}") from None
    if not isinstance(d, dict):
        raise BadData("bad_depth_request", f"not an object: {short_repr(d)}")
    symbol, reason = d.get("s"), d.get("reason")
    if not isinstance(symbol, str) or not SYMBOL.fullmatch(symbol) or reason not in REASONS:
        raise BadData("bad_depth_request", f"symbol {short_repr(symbol)}, reason {short_repr(reason)}")
    return symbol, reason
