import random

import orjson
import pytest

from cryptomon.backoff import Backoff
from cryptomon.ingestion.events import (
    DUPLICATE,
    LATE,
    NEW,
    BadFrame,
    Control,
    RecentIds,
    SequenceTracker,
    agg_trade_from_rest,
    combined_stream_url,
    encode,
    parse_frame,
    trade_from_rest,
)

SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT"})
TRADE = {
    "e": "trade",
    "E": 1732400000123,
    "s": "BTCUSDT",
    "t": 12345,
    "p": "97000.01000000",
    "q": "0.00100000",
    "T": 1732400000120,
    "m": True,
    "M": True,
}
AGG = {
    "e": "aggTrade",
    "E": 1,
    "s": "ETHUSDT",
    "a": 9,
    "p": "3400.5",
    "q": "1.25",
    "f": 100,
    "l": 102,
    "T": 1,
    "m": False,
    "M": True,
}
BOOK = {"u": 400900217, "s": "BTCUSDT", "b": "97000.00", "B": "31.21", "a": "97000.02", "A": "40.66"}


def frame(stream, data):
    return orjson.dumps({"stream": stream, "data": data})


def test_combined_stream_url_lists_every_symbol_and_kind():
    url = combined_stream_url("wss://stream.binance.com:9443/stream", ("BTCUSDT", "ETHUSDT"))
    assert url == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker/"
        "ethusdt@trade/ethusdt@aggTrade/ethusdt@bookTicker"
    )


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
    with pytest.raises(BadFrame) as err:
        parse_frame(raw, SYMBOLS)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("p", "q"),
    [("0.00000001", "99999999999.99999999"), ("10000000.00000000", "0.00000001"), ("0.00000812", "92233720368")],
)
def test_the_extremes_of_binance_prices_and_quantities_are_accepted_as_sent(p, q):
    ev = parse_frame(frame("btcusdt@trade", {**TRADE, "p": p, "q": q}), SYMBOLS)
    assert (ev.data["p"], ev.data["q"]) == (p, q)


def test_server_shutdown_is_a_control_event():
    assert parse_frame(b'{"e":"serverShutdown","E":1}', SYMBOLS) == Control("serverShutdown")
    assert parse_frame(frame("btcusdt@trade", {"e": "serverShutdown"}), SYMBOLS) == Control("serverShutdown")


def test_rest_rows_become_stream_payloads():
    t = trade_from_rest(
        "BTCUSDT",
        {
            "id": 28457,
            "price": "4.00000100",
            "qty": "12.00000000",
            "quoteQty": "48.0",
            "time": 1499865549590,
            "isBuyerMaker": True,
            "isBestMatch": True,
        },
    )
    assert (t.kind, t.seq, t.data["p"], t.data["T"], t.data["m"]) == ("trade", 28457, "4.00000100", 1499865549590, True)
    a = agg_trade_from_rest(
        "BTCUSDT",
        {
            "a": 26129,
            "p": "0.01633102",
            "q": "4.70443515",
            "f": 27781,
            "l": 27781,
            "T": 1498793709153,
            "m": True,
            "M": True,
        },
    )
    assert (a.kind, a.seq, a.data["f"], a.data["e"]) == ("aggTrade", 26129, 27781, "aggTrade")
    with pytest.raises(BadFrame):
        trade_from_rest("BTCUSDT", {"id": "x", "price": "1", "qty": "1", "time": 1, "isBuyerMaker": True})


def test_tracker_detects_gaps_late_arrivals_and_duplicates():
    tr = SequenceTracker()
    key = ("BTCUSDT", "trade")
    assert [tr.observe(key, i) for i in (10, 11, 12)] == [NEW, NEW, NEW]
    assert tr.observe(key, 12) == DUPLICATE
    assert tr.observe(key, 16, now=5.0) == NEW  # 13..15 missing
    assert tr.pending() == [(key, 13, 15)] and tr.gaps_found == 1 and tr.ids_missed == 3
    assert tr.observe(key, 14) == LATE  # out of order: fills the middle
    assert tr.pending() == [(key, 13, 13), (key, 15, 15)]
    assert tr.observe(key, 14) == DUPLICATE
    assert tr.fill(key, 13) and not tr.fill(key, 13)
    assert tr.pending(older_than=4.0) == [] and tr.pending(older_than=5.0) == [(key, 15, 15)]
    assert tr.drop_gap(key, 10, 20) == 1 and tr.missing_count() == 0
    assert tr.observe(key, 9) == DUPLICATE  # before the first id seen: not ours to fill


def test_tracker_keeps_symbols_and_kinds_apart():
    tr = SequenceTracker()
    tr.observe(("BTCUSDT", "trade"), 1)
    tr.observe(("BTCUSDT", "aggTrade"), 1)
    tr.observe(("ETHUSDT", "trade"), 100)
    assert tr.observe(("BTCUSDT", "trade"), 2) == NEW
    assert tr.observe(("ETHUSDT", "trade"), 102) == NEW
    assert tr.pending() == [(("ETHUSDT", "trade"), 101, 101)]


def test_tracker_random_walk_against_a_set_model():
    rng = random.Random(7)
    tr = SequenceTracker()
    key = ("X", "trade")
    ids = list(range(1, 2001))
    # shuffle locally (out-of-order within 5), drop some, duplicate some
    for i in range(0, len(ids) - 5, 5):
        chunk = ids[i : i + 5]
        rng.shuffle(chunk)
        ids[i : i + 5] = chunk
    dropped = set(rng.sample(ids[10:], 50))
    stream = [i for i in ids if i not in dropped]
    stream += rng.sample(stream, 40)  # duplicates at the end
    first = stream[0]
    seen = set()
    for i in stream:
        verdict = tr.observe(key, i)
        expected = DUPLICATE if i in seen or i < first else (NEW if i > max(seen, default=0) else LATE)
        assert verdict == expected, i
        if i >= first:
            seen.add(i)
    missing = {i for _, s, e in tr.pending() for i in range(s, e + 1)}
    assert missing == set(range(first, max(seen) + 1)) - seen


def test_recent_ids_is_bounded():
    r = RecentIds(size=3)
    assert [r.seen(i) for i in (1, 2, 3, 1)] == [False, False, False, True]
    r.seen(4)  # evicts 1
    assert r.seen(1) is False and len(r._set) == 3


def test_backoff_doubles_with_jitter_caps_and_resets():
    b = Backoff(1.0, 60.0, reset_after=30.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    for i, d in enumerate(delays):
        base = min(60.0, 2.0**i)
        assert base / 2 <= d <= base
    assert delays[-1] <= 60.0
    b.success(5.0)
    assert b.attempt == 8  # not stable long enough
    b.success(31.0)
    assert b.attempt == 0 and b.next_delay() <= 1.0


def test_tracker_resumes_after_the_previous_runs_last_id():
    tr = SequenceTracker(max_resume_gap=1000)
    key = ("BTCUSDT", "trade")
    tr.seed(key, 500)
    assert tr.observe(key, 620, now=1.0) == NEW  # streamed while the ingestion was down: 501..619
    assert tr.pending() == [(key, 501, 619)] and tr.ids_missed == 119 and tr.baseline_resets == 0
    assert tr.observe(key, 621) == NEW and tr.observe(key, 600) == LATE


def test_tracker_does_not_resume_when_ids_started_over_or_the_gap_is_too_long():
    tr = SequenceTracker(max_resume_gap=1000)
    over, far = ("SIMUSDT", "trade"), ("BTCUSDT", "aggTrade")
    tr.seed(over, 1_000_800)
    tr.seed(far, 1_000_800)
    assert tr.observe(over, 1_000_000) == NEW  # a restarted simulator: ids begin again
    assert tr.observe(far, 1_002_000) == NEW  # 1,199 missing > 1,000
    assert tr.pending() == [] and tr.baseline_resets == 2 and tr.resume_ids_skipped == 1199
    assert tr.observe(over, 1_000_001) == NEW and tr.observe(over, 1_000_000) == DUPLICATE


def test_highest_ids_per_symbol_and_kind_from_kafka_values():
    from cryptomon.ingestion.resume import highest_ids

    values = [
        orjson.dumps(v)
        for v in (
            {"e": "trade", "s": "BTCUSDT", "t": 10},
            {"e": "trade", "s": "BTCUSDT", "t": 12},
            {"e": "trade", "s": "BTCUSDT", "t": 11, "backfilled": True},  # produced later, older id
            {"e": "aggTrade", "s": "BTCUSDT", "a": 7},
            {"e": "trade", "s": "OTHERUSDT", "t": 99},
            {"e": "trade", "s": "ETHUSDT", "t": "5"},
            {"e": "trade", "s": "ETHUSDT", "t": True},
        )
    ] + [b"not json", b'{"e": "bookTicker"}']
    assert highest_ids(values, frozenset({"BTCUSDT", "ETHUSDT"})) == {
        ("BTCUSDT", "trade"): 12,
        ("BTCUSDT", "aggTrade"): 7,
    }
