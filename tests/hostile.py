"""Hostile values for the property tests of the typed fast paths against the contract (payloads.py in the
ingestion, records.py in the worker): Binance's documented payloads, and values at and across every bound
the contract has."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st

from cryptomon.binance import limits

PAYLOADS = json.loads((Path(__file__).parent / "unit" / "resources" / "binance_payloads.json").read_text())
NOW = PAYLOADS["trade"]["T"] + 5
LATEST = NOW + limits.DEFAULT_CLOCK_SKEW_SECONDS * 1000

# values at and across every bound the contract has, and the kinds of values that broke validators before
EDGES = (
        0, -1, 1, limits.MAX_ID, limits.MAX_ID + 1, 1 << 64, limits.FIRST_EVENT_MS - 1, limits.FIRST_EVENT_MS,
        NOW, LATEST, LATEST + 1, 1.0, 1e3, True, False, None, "", "0", "0.00000000", "1.5", "1.5\n", " 1.5",
        "1.123456789", "99999999.99999999", "999999999.1", "١٠٠", "\ud800", "BTCUSDT", "btcusdt", "B", "A" * 21,
        "x" * 300, "trade", "aggTrade", "depthUpdate", [], {}, [1], {"a": 1}, [["1.5", "2"]], [["0.0", "2"]],
        [["1.5", "0"]], [["1.5", "2", "x"]], [["1.5"]], [[1.5, "2"]], [["1.5", "2"], ["1", "1.5\n"]], "1|2",
        [["1|2", "3|4"]], [["1.5", "2|3"], ["4|5", "6"]],  # a separator inside: two keep the parts even
)  # fmt: skip
NAMES = (
    "e", "E", "s", "t", "a", "p", "q", "T", "m", "M", "f", "l", "u", "U", "b", "B", "A", "x",
    "ingestion_timestamp", "backfilled", "session",
)  # fmt: skip
values = (
    st.sampled_from(EDGES) | st.integers() | st.text(max_size=12) | st.floats(allow_nan=False, allow_infinity=False)
)
names = st.sampled_from(NAMES)


def record(kind: str, change: dict, drop: list[str], duplicate: tuple[str, object] | None) -> bytes:
    """A payload of `kind` as the ingestion writes it, with fields changed, dropped or given twice."""
    data = {**PAYLOADS[kind], "ingestion_timestamp": NOW, **change}
    for name in drop:
        data.pop(name, None)
    text = json.dumps(data)
    if duplicate is not None:  # a key twice: orjson and msgspec must agree on which one counts
        name, value = duplicate
        text = f"{text[:-1]}, {json.dumps(name)}: {json.dumps(value)}}}" if data else text
    return text.encode("utf-8", "surrogatepass")
