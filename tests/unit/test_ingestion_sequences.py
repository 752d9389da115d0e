"""Consecutive ids: gaps, late arrivals, duplicates, resuming after a previous run, and the ids read back from Kafka."""

from __future__ import annotations

import random

import orjson

from cryptomon.ingestion.sequences import DUPLICATE, LATE, NEW, RecentIds, SequenceTracker


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


def test_recent_ids_are_forgotten_after_their_window():
    r = RecentIds(size=4096, window_ms=10_000)
    assert [r.seen(i, now_ms=1_000 + i) for i in range(100)] == [False] * 100
    assert r.seen(50, now_ms=5_000) is True  # within ten seconds: a copy
    assert r.seen(3, now_ms=11_006) is False and len(r) == 95  # 0..5 were seen more than ten seconds before
    assert r.seen(6, now_ms=11_006) is True
    assert r.seen(99, now_ms=30_000) is False and len(r) == 1  # a quiet stream holds only its last ids


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

    def trade(symbol, tid, **extra):
        return {"e": "trade", "E": T, "s": symbol, "t": tid, "p": "1.0", "q": "1.0", "T": T, "m": True, **extra}

    agg = {"e": "aggTrade", "E": T, "s": "BTCUSDT", "a": 7, "p": "1.0", "q": "1.0", "f": 1, "l": 2, "T": T, "m": True}
    values = [
        orjson.dumps(v)
        for v in (
            trade("BTCUSDT", 10),
            trade("BTCUSDT", 12),
            trade("BTCUSDT", 11, backfilled=True),  # produced later, older id
            agg,
            trade("OTHERUSDT", 99),
            trade("ETHUSDT", "5"),
            trade("ETHUSDT", True),
            trade("ETHUSDT", 10**12, q="0"),  # outside the contract: says nothing of where the stream stands
        )
    ] + [b"not json", b'{"e": "bookTicker"}']
    assert highest_ids(values, frozenset({"BTCUSDT", "ETHUSDT"})) == {
        ("BTCUSDT", "trade"): 12,
        ("BTCUSDT", "aggTrade"): 7,
    }


T = 1_732_400_000_000
