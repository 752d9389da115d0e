"""The ingestion's frames: combined-stream frames parsed, routed, rejected with a reason, encoded for Kafka."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from cryptomon.errors import BadData
from cryptomon.ingestion.frames import Control, encode, is_reply, parse_frame

PAYLOADS = json.loads((Path(__file__).parent / "resources" / "binance_payloads.json").read_text())
TRADE, AGG, BOOK = PAYLOADS["trade"], PAYLOADS["aggTrade"], PAYLOADS["bookTicker"]
SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})


def frame(stream, data):
    return orjson.dumps({"stream": stream, "data": data})


@pytest.mark.parametrize(
    ("stream", "data", "kind", "seq"),
    [
        ("btcusdt@trade", TRADE, "trade", 12345),
        ("ethusdt@aggTrade", AGG, "aggTrade", 9),
        ("btcusdt@bookTicker", BOOK, "bookTicker", 400900217),
    ],
)
def test_valid_frames_are_routed(stream, data, kind, seq):
    ev = parse_frame(frame(stream, data), SYMBOLS)
    assert (ev.kind, ev.symbol, ev.seq) == (kind, data["s"], seq)


def test_encode_adds_the_ingestion_timestamp_and_keeps_the_payload():
    ev = parse_frame(frame("btcusdt@trade", dict(TRADE)), SYMBOLS)
    out = orjson.loads(encode(ev, 1732400000999))
    assert out == {**TRADE, "ingestion_timestamp": 1732400000999}
    assert orjson.loads(encode(ev, 5, backfilled=True))["backfilled"] is True


def test_a_frame_cannot_bring_in_the_fields_cryptomon_adds():
    forged = {**BOOK, "backfilled": True}
    ev = parse_frame(frame("btcusdt@bookTicker", forged), SYMBOLS)
    assert "backfilled" not in orjson.loads(encode(ev, 5))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not_json"),
        (b"[1, 2]", "bad_envelope"),
        (b'{"data": {}}', "bad_envelope"),
        (frame("dogeusdt@trade", {**TRADE, "s": "DOGEUSDT"}), "unknown_stream"),
        (frame("btcusdt@depth", TRADE), "unknown_stream"),
        (frame("btcusdt@trade", {**TRADE, "s": "ETHUSDT"}), "bad_symbol"),
        (frame("btcusdt@trade", {**TRADE, "e": "aggTrade"}), "bad_event_type"),
        (frame("btcusdt@trade", {k: v for k, v in TRADE.items() if k != "p"}), "missing_field"),
        (frame("btcusdt@trade", {**TRADE, "t": "12345"}), "wrong_type"),
        (frame("btcusdt@trade", {**TRADE, "t": True}), "wrong_type"),  # a bool is not an id
        (frame("btcusdt@trade", {**TRADE, "m": 1}), "wrong_type"),
        (frame("btcusdt@trade", {**TRADE, "p": "1e5"}), "bad_decimal"),
        (frame("btcusdt@trade", {**TRADE, "q": "-1.0"}), "bad_decimal"),
        (frame("btcusdt@trade", {**TRADE, "p": "1.123456789"}), "bad_decimal"),
        (frame("btcusdt@trade", {**TRADE, "p": "100000000.00000000"}), "bad_decimal"),  # a price >= 1e8
        (frame("btcusdt@trade", {**TRADE, "q": "1000000000000.00000000"}), "bad_decimal"),  # a quantity >= 1e12
        (frame("btcusdt@trade", {**TRADE, "p": "1.5\n"}), "bad_decimal"),  # "$" alone would let a final newline in
        (frame("btcusdt@bookTicker", {**BOOK, "a": "123456789.0"}), "bad_decimal"),
        (frame("btcusdt@bookTicker", {k: v for k, v in BOOK.items() if k != "a"}), "missing_field"),
        (frame("btcusdt@trade", [1]), "bad_payload"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(BadData) as err:
        parse_frame(raw, SYMBOLS)
    assert err.value.reason == reason


def test_server_shutdown_is_a_control_event():
    assert parse_frame(b'{"e":"serverShutdown","E":1}', SYMBOLS) == Control("serverShutdown")
    assert parse_frame(frame("btcusdt@trade", {"e": "serverShutdown"}), SYMBOLS) == Control("serverShutdown")


def test_answers_to_live_requests_are_told_apart_from_data():
    assert is_reply(b'{"result": null, "id": 1}') and is_reply(b'{"error": {"code": 2}, "id": "a"}')
    assert not is_reply(frame("btcusdt@trade", TRADE)) and not is_reply(b"not json")
