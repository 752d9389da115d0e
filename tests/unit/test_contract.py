"""The validation contract (cryptomon.binance.schema, bounds in limits.py) at each door: the exchange's frame,
the Kafka record the worker reads, the ingestion's resume scan and state, the mail header, Retry-After.
Each hostile input of the hostile-input issue is refused with a reason, never an exception of another kind."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from cryptomon.alerts.rules import header_safe
from cryptomon.binance import limits
from cryptomon.errors import BadData
from cryptomon.ingestion import state
from cryptomon.ingestion.frames import MAX_DEAD_LETTER_RAW, dead_letter_value, encode, parse_frame
from cryptomon.ingestion.rest_client import _seconds
from cryptomon.ingestion.resume import highest_ids
from cryptomon.worker.rows import book_row, trade_row

PAYLOADS = json.loads((Path(__file__).parent / "resources" / "binance_payloads.json").read_text())
TRADE, BOOK = PAYLOADS["trade"], PAYLOADS["bookTicker"]
SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})
NOW = TRADE["T"] + 5  # the ingestion time of the frames below
SKEW = limits.DEFAULT_CLOCK_SKEW_SECONDS * 1000


def frame(data, stream="btcusdt@trade") -> bytes:
    return json.dumps({"stream": stream, "data": data}).encode()  # the stdlib's: orjson stops at 255 levels


def reason_of_frame(raw: bytes) -> str:
    with pytest.raises(BadData) as err:
        parse_frame(raw, SYMBOLS, NOW + SKEW)
    return err.value.reason


def record(payload: dict, ingestion_ms: int = NOW) -> bytes:
    return orjson.dumps({**payload, "ingestion_timestamp": ingestion_ms})


def reason_of_record(value: bytes, parse=trade_row) -> str:
    with pytest.raises(BadData) as err:
        parse(value, NOW + SKEW)
    return err.value.reason


def deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"T": 253_402_300_800_000}, "bad_time"),  # year 10000: Python's datetime (and PySpark's collect) end before
        ({"T": 9_300_000_000_000_000}, "bad_time"),  # past what timestamp_millis holds
        ({"T": NOW + SKEW + 1}, "bad_time"),  # a plausible future: would move Spark's watermark
        ({"T": limits.FIRST_EVENT_MS - 1}, "bad_time"),
        ({"T": -62_135_596_800_001}, "bad_time"),  # before year 1
        ({"s": "B" * 20_000}, "bad_symbol"),
        ({"s": ["BTCUSDT"]}, "bad_symbol"),
        ({"q": "0"}, "not_positive"),
        ({"q": "0.00000000"}, "not_positive"),
        ({"p": "0.0"}, "not_positive"),
        ({"q": "-1"}, "bad_decimal"),
        ({"p": "١٠٠"}, "bad_decimal"),  # Arabic-Indic digits match \d
        ({"t": -1}, "bad_id"),
        ({"t": -5}, "bad_id"),
        ({"t": 1 << 63}, "bad_id"),  # past BIGINT
        ({"x": deep(300)}, "bad_unknown_field"),  # orjson.dumps stops at 255 levels: it would fail at encode
        ({"x": "y" * (limits.MAX_UNKNOWN_STRING + 1)}, "bad_unknown_field"),
        ({f"f{i}": 1 for i in range(limits.MAX_PAYLOAD_FIELDS)}, "too_many_fields"),
    ],
)
def test_a_hostile_trade_frame_is_refused_with_its_reason(change, reason):
    assert reason_of_frame(frame({**TRADE, **change})) == reason


def test_a_frame_at_the_size_bound_passes_and_one_byte_more_does_not():
    good = frame(TRADE)
    at_bound = good + b" " * (limits.MAX_MARKET_FRAME_BYTES - len(good))  # JSON allows trailing white space
    assert parse_frame(at_bound, SYMBOLS, NOW + SKEW).seq == TRADE["t"]
    assert reason_of_frame(at_bound + b" ") == "frame_too_large"


def test_frames_past_the_size_bound_are_refused_before_parsing():
    assert reason_of_frame(b"x" * (1 << 20)) == "frame_too_large"  # a megabyte of non-JSON
    assert reason_of_frame(frame({**TRADE, "x": "y" * 200}) + b" " * limits.MAX_MARKET_FRAME_BYTES) == (
        "frame_too_large"
    )


def test_a_frame_cannot_claim_to_be_backfilled_and_unknown_scalars_pass_unchanged():
    ev = parse_frame(frame({**TRADE, "backfilled": True, "b": 88, "extra": "ok"}), SYMBOLS, NOW + SKEW)
    out = orjson.loads(encode(ev, NOW))
    assert "backfilled" not in out and out["b"] == 88 and out["extra"] == "ok"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (record({**TRADE, "T": 253_402_300_800_000}, 253_402_300_800_005), "bad_time"),  # both far ahead
        (record({**TRADE, "T": NOW + SKEW + 10}), "bad_time"),  # ahead of its own ingestion time
        (record(TRADE, NOW + SKEW + 1), "bad_time"),  # an ingestion time ahead of the reader's clock
        (record(TRADE, 5), "bad_time"),
        (record({**TRADE, "q": "0"}), "not_positive"),
        (record({**TRADE, "s": "X" * 20_000}), "bad_symbol"),  # an index entry PostgreSQL refuses
        (record({**TRADE, "s": "btcusdt"}), "bad_symbol"),
        (record({**TRADE, "backfilled": "yes"}), "wrong_type"),
        (orjson.dumps({**TRADE, "ingestion_timestamp": True}), "bad_time"),  # a bool is not a time
    ],
)
def test_a_hostile_kafka_record_is_refused_by_the_worker(payload, reason):
    assert reason_of_record(payload) == reason


def test_book_ticker_records_are_checked_the_same_way():
    assert book_row(record(BOOK), NOW + SKEW).symbol == "BTCUSDT"
    assert reason_of_record(record({**BOOK, "u": -1}), book_row) == "bad_id"
    assert reason_of_record(record(BOOK, NOW + SKEW + 1), book_row) == "bad_time"


def test_the_resume_scan_skips_records_of_any_shape():
    values = [
        orjson.dumps({"e": "trade", "s": ["X"], "t": 5}),  # made every start crash (unhashable list)
        orjson.dumps({"e": ["trade"], "s": "BTCUSDT", "t": 5}),
        orjson.dumps({"e": "trade", "s": {"a": 1}, "t": 5}),
        orjson.dumps({"e": "trade", "s": "BTCUSDT", "t": 1 << 63}),  # past BIGINT
        orjson.dumps([1, 2]),
        b"\xff\xfe",
        orjson.dumps({**TRADE, "t": 10**12, "q": "0"}),  # outside the contract
        orjson.dumps({**TRADE, "t": 7}),
    ]
    assert highest_ids(values, None) == {("BTCUSDT", "trade"): 7}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"X" * 30 + b"|trade", b'{"last": 5}'),
        (b"BTCUSDT|kline", b'{"last": 5}'),
        (b"BTCUSDT|trade", b'{"last": true}'),
        (b"BTCUSDT|trade", b'{"last": 5, "gaps": [[1, 2, 3]]}'),
        (b"BTCUSDT|trade", b'{"last": 5, "gaps": [[4, 9]]}'),  # a gap past the last id
        (b"BTCUSDT|trade", b'{"last": 5, "gaps": "x"}'),
        (b"BTCUSDT|trade", b'{"last": 5, "gaps": [[1.5, 2]]}'),
    ],
)
def test_a_foreign_state_record_is_ignored(key, value):
    assert state.decode(key, value) is None


def test_a_state_record_as_the_ingestion_writes_it_is_read():
    assert state.decode(b"BTCUSDT|trade", b'{"last": 9, "gaps": [[2, 3]]}') == (("BTCUSDT", "trade"), (9, [[2, 3]]))


def test_a_dead_letter_keeps_the_start_of_a_huge_frame_and_its_size():
    raw = b"{" * (1 << 20)
    value = dead_letter_value(raw, "frame_too_large", "d" * 5000, NOW)
    letter = orjson.loads(value)
    assert len(value) < MAX_DEAD_LETTER_RAW + 4096  # far below Kafka's 1 MB
    assert letter["raw_bytes"] == 1 << 20 and letter["truncated"] is True and len(letter["detail"]) == 1024


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("inf", 60.0), ("nan", 60.0), ("-inf", 60.0), ("1e300", float(limits.BAN_MAX_SECONDS)), ("0", 1.0), ("7", 7.0)],
)
def test_retry_after_is_bounded(header, seconds):
    assert _seconds(header, default=60.0) == seconds


def test_a_symbol_in_a_mail_header_cannot_end_the_line():
    assert header_safe("BTCUSDT") == "BTCUSDT"
    unsafe = header_safe("EVIL\r\nBcc: someone@example.com")
    assert "\n" not in unsafe and "\r" not in unsafe and unsafe.endswith("(invalid symbol)")
