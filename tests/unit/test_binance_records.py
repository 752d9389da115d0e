"""The worker's typed decoding (binance/records.py, msgspec) against the contract alone (orjson +
validate_payload): on real, mutated and hostile records both give the same row or the same dead-letter
reason; and the typed path is the one real records take (else the speed-up would be gone unseen)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.binance import limits
from cryptomon.binance.records import decode_book_ticker, decode_trade
from cryptomon.binance.schema import PRICE, QUANTITY, SEQ_FIELD, SYMBOL, Event
from cryptomon.errors import BadData
from cryptomon.ingestion.frames import encode
from cryptomon.simulator.replay import read_timed
from cryptomon.worker.rows import book_row, contract_book_row, contract_trade_row, trade_row
from tests.helpers import real_capture
from tests.hostile import EDGES, LATEST, NAMES, NOW, names, record, values


def outcome(parse, raw: bytes | None, latest: int | None):
    try:
        return parse(raw, latest)
    except BadData as bad:
        return ("bad", bad.reason)


def parsers(kind: str):
    return (book_row, contract_book_row) if kind == "bookTicker" else (trade_row, contract_trade_row)


def test_every_field_at_every_edge_gives_the_contracts_answer():
    for kind in ("trade", "aggTrade", "bookTicker"):
        fast, contract = parsers(kind)
        for name in NAMES:
            for value in EDGES:
                for latest in (None, LATEST):
                    raw = record(kind, {name: value}, [], None)
                    assert outcome(fast, raw, latest) == outcome(contract, raw, latest), (kind, name, value)
            raw = record(kind, {}, [name], None)
            assert outcome(fast, raw, LATEST) == outcome(contract, raw, LATEST), (kind, "without", name)


@settings(max_examples=1500, deadline=None)
@given(
    kind=st.sampled_from(["trade", "aggTrade", "bookTicker"]),
    change=st.dictionaries(names, values, max_size=3),
    drop=st.lists(names, max_size=2),
    duplicate=st.none() | st.tuples(names, values),
    latest=st.sampled_from([None, LATEST, NOW - 1]),
)
def test_the_typed_path_gives_the_contracts_row_or_its_reason(kind, change, drop, duplicate, latest):
    raw = record(kind, change, drop, duplicate)
    fast, contract = parsers(kind)
    assert outcome(fast, raw, latest) == outcome(contract, raw, latest)


@settings(max_examples=300, deadline=None)
@given(raw=st.none() | st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_give_the_contracts_answer(raw):
    assert outcome(trade_row, raw, LATEST) == outcome(contract_trade_row, raw, LATEST)
    assert outcome(book_row, raw, LATEST) == outcome(contract_book_row, raw, LATEST)


def test_every_real_record_takes_the_typed_path_to_the_contracts_row():
    seen = {"trade": 0, "aggTrade": 0, "bookTicker": 0}
    for name in ("btcusdt_20240808.gz", "ethusdt_20240808.gz"):
        for _, symbol, kind, data in read_timed(real_capture(name)):
            if kind not in seen:
                continue
            ingestion_ms = data.get("E", data.get("T", limits.FIRST_EVENT_MS)) + 3
            raw = encode(Event(kind, symbol, data[SEQ_FIELD[kind]], data), ingestion_ms)
            decode = decode_book_ticker if kind == "bookTicker" else decode_trade
            assert decode(raw) is not None, raw
            fast, contract = parsers(kind)
            assert fast(raw, ingestion_ms) == contract(raw, ingestion_ms)
            seen[kind] += 1
    assert seen["trade"] > 1000 and seen["bookTicker"] > 1000, seen


@settings(max_examples=2000, deadline=None)
@given(text=st.text(alphabet="0123456789.AZ|\n", max_size=24))
def test_the_possessive_patterns_match_what_the_plain_ones_do(text):
    for pattern in (PRICE, QUANTITY, SYMBOL):
        plain = re.compile(pattern.pattern.replace("}+", "}").replace(")?+", ")?"))
        assert "+" not in plain.pattern
        assert bool(pattern.fullmatch(text)) == bool(plain.fullmatch(text)), (pattern.pattern, text)
