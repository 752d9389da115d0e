"""Property-based tests of the frame and record validators: whatever comes in, either it passes with its
values unchanged, or it raises BadData; never another exception, and what passes can always be encoded."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.binance import limits
from cryptomon.errors import BadData
from cryptomon.ingestion.frames import encode, parse_frame
from cryptomon.worker.rows import book_row, trade_row

PAYLOADS = json.loads((Path(__file__).parent / "resources" / "binance_payloads.json").read_text())
SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})
NOW = PAYLOADS["trade"]["T"] + 5
LATEST = NOW + limits.DEFAULT_CLOCK_SKEW_SECONDS * 1000

# any JSON value, nested a little, with the kinds of values that broke things: huge ints, long strings,
# non-ASCII digits, deep lists
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=1 << 64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
    | st.sampled_from(["0", "0.0", "1.5", "١٠٠", "BTCUSDT", "1e30", "99999999.99999999", "1.123456789"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["e", "E", "s", "t", "a", "p", "q", "T", "m", "M", "f", "l", "u", "b", "B", "A", "x"])
changes = st.dictionaries(field_names, json_values, max_size=4)


def mutated(kind: str, change: dict, drop: list[str]) -> dict:
    data = {**PAYLOADS[kind], **change}
    for name in drop:
        data.pop(name, None)
    return data


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["trade", "aggTrade", "bookTicker"]), change=changes, drop=st.lists(field_names, max_size=2)
)
def test_a_frame_passes_unchanged_or_is_bad_data(kind, change, drop):
    data = mutated(kind, change, drop)
    stream = f"{PAYLOADS[kind]['s'].lower()}@{kind}"
    raw = json.dumps({"stream": stream, "data": data}).encode()  # any JSON: a big int orjson would not write
    try:
        ev = parse_frame(raw, SYMBOLS, LATEST)
    except BadData as bad:
        assert bad.reason and bad.detail
        return
    assert ev.data == orjson.loads(raw)["data"]  # nothing was changed on the way
    out = orjson.loads(encode(ev, NOW))  # and it can always be encoded for Kafka
    assert out["ingestion_timestamp"] == NOW


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["trade", "aggTrade", "bookTicker"]), change=changes, drop=st.lists(field_names, max_size=2)
)
def test_a_record_becomes_its_row_or_is_bad_data(kind, change, drop):
    data = {**mutated(kind, change, drop), "ingestion_timestamp": NOW}
    parse = book_row if kind == "bookTicker" else trade_row
    try:
        row = parse(json.dumps(data).encode(), LATEST)
    except BadData as bad:
        assert bad.reason
        return
    assert row.symbol == data["s"]
    if kind == "bookTicker":
        assert (row.update_id, row.bid, row.bid_qty, row.ask, row.ask_qty) == tuple(data[k] for k in "ubBaA")
    else:
        assert (row.price, row.quantity, row.event_time_ms) == (data["p"], data["q"], data["T"])


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_are_bad_data_at_both_doors(raw):
    for call in (lambda: parse_frame(raw, SYMBOLS, LATEST), lambda: trade_row(raw, LATEST), lambda: book_row(raw)):
        with contextlib.suppress(BadData):
            call()
