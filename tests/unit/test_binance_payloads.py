"""The ingestion's typed decoding of a frame (binance/payloads.py, msgspec) against the contract alone
(parse_frame: orjson + validate_payload / DepthDiff.from_payload): whatever the typed path accepts, the
contract accepts as the same event with the same Kafka value once parsed; what it does not, it leaves to the
contract (whose reason is the dead letter's). And real frames take the typed path, else the speed-up would
be gone unseen."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.binance import limits
from cryptomon.binance.payloads import decode_frame
from cryptomon.binance.schema import DEPTH
from cryptomon.errors import BadData
from cryptomon.ingestion.frames import Control, encode, parse_frame, route
from tests.helpers import real_capture
from tests.hostile import EDGES, LATEST, NAMES, NOW, PAYLOADS, names, values

SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})
DEPTH_STREAM = "depth@100ms"
DIFF = {"e": "depthUpdate", "E": NOW - 3, "s": "BTCUSDT", "U": 10, "u": 12,
        "b": [["61737.63000000", "0.00000000"]], "a": [["61837.64000000", "1.54698000"], ["61840", "2"]]}  # fmt: skip
SAMPLES = {"trade": PAYLOADS["trade"], "aggTrade": PAYLOADS["aggTrade"], "bookTicker": PAYLOADS["bookTicker"],
           DEPTH_STREAM: DIFF}  # fmt: skip
STREAMS = ("trade", "aggTrade", "bookTicker", DEPTH_STREAM, "depth", "kline_1m", "", "trade@x")


def frame(kind: str, change: dict, drop: list[str], duplicate=None, stream: str | None = None, envelope=None) -> bytes:
    data = {**SAMPLES[kind], **change}
    for name in drop:
        data.pop(name, None)
    symbol = str(data.get("s", "BTCUSDT")).lower()
    text = json.dumps(data)
    if duplicate is not None and data:  # a key twice: orjson and msgspec must agree on which one counts
        text = f"{text[:-1]}, {json.dumps(duplicate[0])}: {json.dumps(duplicate[1])}}}"
    outer = {"stream": f"{symbol}@{kind}" if stream is None else stream, **(envelope or {})}
    return f'{json.dumps(outer)[:-1]}, "data": {text}}}'.encode("utf-8", "surrogatepass")


def agrees(raw: bytes, latest: int, depth_stream: str | None = DEPTH_STREAM) -> bool:
    """The typed path's answer is the contract's; True when the typed path took the frame."""
    fast = decode_frame(raw, SYMBOLS, latest, depth_stream)
    if fast is None:
        return False
    ev = parse_frame(raw, SYMBOLS, latest, depth_stream)  # raises BadData if the typed path let in too much
    assert not isinstance(ev, Control)
    assert (fast.kind, fast.symbol, fast.seq) == (ev.kind, ev.symbol, ev.seq), raw
    assert fast.first == (ev.data["U"] if ev.kind == DEPTH else ev.seq)
    assert orjson.loads(encode(fast, NOW)) == orjson.loads(encode(ev, NOW)), raw
    return True


def test_levels_hiding_the_separator_are_the_contracts():
    """Two strings with a "|" inside keep the joined levels' parts even: the one regex call over them would
    match (found 2026-12-03: the typed path forwarded such a diff, the contract rejects it)."""
    for bids in ([["1|2", "3|4"]], [["1.5", "2|3"], ["4|5", "6"]], [["1|2", "3|4"], ["1", "2"]]):
        raw = frame(DEPTH_STREAM, {"b": bids}, [])
        assert decode_frame(raw, SYMBOLS, LATEST, DEPTH_STREAM) is None
        with pytest.raises(BadData, match="bad_depth"):
            route(raw, SYMBOLS, LATEST, DEPTH_STREAM)


def test_the_documented_payloads_take_the_typed_path():
    for kind in SAMPLES:
        assert agrees(frame(kind, {}, []), LATEST), kind
    assert not agrees(frame(DEPTH_STREAM, {}, []), LATEST, depth_stream=None)  # the book is off: not routed


def test_every_field_at_every_edge_gives_the_contracts_answer():
    taken = 0
    for kind in SAMPLES:
        for name in NAMES:
            for value in EDGES:
                for latest in (NOW - 1, LATEST):
                    taken += agrees(frame(kind, {name: value}, []), latest)
            taken += agrees(frame(kind, {}, [name]), LATEST)
    assert taken > 300  # the edges inside the bounds were taken, not all left to the contract


def test_the_envelope_and_the_stream_name_give_the_contracts_answer():
    for kind in SAMPLES:
        for stream in (*STREAMS, "BTCUSDT@trade", "btcusdt", "btcusdt@", "xrpusdt@trade", "@trade", "btcusdt@@trade"):
            for name in ("btcusdt@" + stream, stream):
                agrees(frame(kind, {}, [], stream=name), LATEST)
        for envelope in ({"extra": 1}, {"stream": 5}, {"data": []}):
            agrees(frame(kind, {}, [], envelope=envelope), LATEST)
    assert decode_frame(b'{"stream":"btcusdt@trade","data":[1]}', SYMBOLS, LATEST, None) is None
    assert decode_frame(b'{"e":"serverShutdown","E":1}', SYMBOLS, LATEST, None) is None


@settings(max_examples=2000, deadline=None)
@given(
    kind=st.sampled_from(sorted(SAMPLES)),
    change=st.dictionaries(names, values, max_size=3),
    drop=st.lists(names, max_size=2),
    duplicate=st.none() | st.tuples(names, values),
    stream=st.none() | st.sampled_from(STREAMS).map("btcusdt@{}".format),
    latest=st.sampled_from([LATEST, NOW - 1, limits.FIRST_EVENT_MS]),
)
def test_mutated_frames_give_the_contracts_answer(kind, change, drop, duplicate, stream, latest):
    agrees(frame(kind, change, drop, duplicate, stream), latest)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_give_the_contracts_answer(raw):
    agrees(raw, LATEST)


def test_large_depth_frames_are_the_contracts():
    levels = [[f"{60000 + i}.5", "1.25"] for i in range(limits.MAX_MARKET_FRAME_BYTES // 20)]
    raw = frame(DEPTH_STREAM, {"b": levels}, [])
    assert decode_frame(raw, SYMBOLS, LATEST, DEPTH_STREAM) is None
    assert route(raw, SYMBOLS, LATEST, DEPTH_STREAM).seq == DIFF["u"]  # the contract takes it


def test_every_real_frame_takes_the_typed_path_to_the_contracts_value():
    seen: dict[str, int] = {}
    for name in ("btcusdt_20240808.gz", "ethusdt_20240808.gz"):
        with gzip.open(real_capture(name), "rb") as f:
            for line in f:
                raw = line.strip().partition(b" ")[2]
                if not raw.startswith(b'{"stream"'):
                    continue  # the recorder's REST snapshots
                latest = orjson.loads(raw)["data"].get("E", NOW) + limits.DEFAULT_CLOCK_SKEW_SECONDS * 1000
                assert agrees(raw, latest), raw
                kind = raw[raw.index(b"@") + 1 : raw.index(b'"', 12)].decode()
                seen[kind] = seen.get(kind, 0) + 1
    assert min(seen.get(k, 0) for k in ("trade", "bookTicker", DEPTH_STREAM)) > 1000, seen
