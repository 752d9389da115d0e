"""The ingestion's side of the book: depth frames routed only when followed, where each symbol's diffs
stand, when a snapshot is needed and whether one fetched bridges the diffs sent; the snapshots a replay
serves as they were recorded."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from cryptomon.binance import limits
from cryptomon.binance.orderbook import DepthSnapshot
from cryptomon.binance.schema import DEPTH
from cryptomon.errors import BadData
from cryptomon.ingestion.depth import DUPLICATE, FORWARD, TOO_OLD, UNNEEDED, USE, DepthFeed, SnapshotFetcher
from cryptomon.ingestion.frames import encode_snapshot, parse_frame
from cryptomon.ingestion.rest_client import RestError
from cryptomon.simulator.replay import ReplayHistory

SYMBOLS = frozenset({"BTCUSDT"})
DIFF = {"e": "depthUpdate", "E": 1723161255208, "s": "BTCUSDT", "U": 10, "u": 12,
        "b": [["61737.63000000", "0.00000000"]], "a": [["61837.64000000", "1.54698000"]]}  # fmt: skip


def frame(stream: str, data: dict) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_a_depth_frame_is_routed_only_when_the_book_is_followed():
    ev = parse_frame(frame("btcusdt@depth@100ms", DIFF), SYMBOLS, depth_stream="depth@100ms")
    assert (ev.kind, ev.symbol, ev.seq) == (DEPTH, "BTCUSDT", 12)
    with pytest.raises(BadData) as off:
        parse_frame(frame("btcusdt@depth@100ms", DIFF), SYMBOLS)
    assert off.value.reason == "unknown_stream"
    with pytest.raises(BadData) as other_speed:  # followed at 100 ms: the 1-second stream is not subscribed
        parse_frame(frame("btcusdt@depth", DIFF), SYMBOLS, depth_stream="depth@100ms")
    assert other_speed.value.reason == "unknown_stream"


def test_frame_size_bounds_depend_on_the_stream():
    big = {**DIFF, "b": [["61737.63000000", "1.00000000"]] * 2000}  # ~50 KB... and more
    big["a"] = [["61837.64000000", "1.00000000"]] * 2000
    raw = frame("btcusdt@depth@100ms", big)
    assert limits.MAX_MARKET_FRAME_BYTES < len(raw) < limits.MAX_DEPTH_FRAME_BYTES
    assert parse_frame(raw, SYMBOLS, depth_stream="depth@100ms").kind == DEPTH
    trade = {"e": "trade", "E": 1723161255208, "s": "BTCUSDT", "t": 1, "p": "1", "q": "1", "T": 1723161255208,
             "m": True, "M": True, "x": "y" * 200}  # fmt: skip
    padded = frame("btcusdt@trade", trade) + b" " * limits.MAX_MARKET_FRAME_BYTES
    with pytest.raises(BadData) as too_large:  # the depth bound is not a way in for a huge trade frame
        parse_frame(padded, SYMBOLS, depth_stream="depth@100ms")
    assert too_large.value.reason == "frame_too_large"


def test_the_feed_asks_for_a_snapshot_at_the_first_diff_and_after_a_gap():
    f = DepthFeed()
    assert f.observe("BTCUSDT", 10, 12) == FORWARD and f.need == {"BTCUSDT": 10}
    assert f.observe("BTCUSDT", 13, 15) == FORWARD and f.need == {"BTCUSDT": 10}
    assert f.observe("BTCUSDT", 14, 15) == DUPLICATE
    assert f.verdict("BTCUSDT", 9) == TOO_OLD and f.need == {"BTCUSDT": 10}  # Binance's step 3: another
    assert f.verdict("BTCUSDT", 11) == USE and f.need == {}
    assert f.verdict("BTCUSDT", 20) == UNNEEDED
    assert f.observe("BTCUSDT", 18, 19) == FORWARD and f.need == {"BTCUSDT": 18} and f.gaps == 1  # 16, 17 lost
    f.observe("ETHUSDT", 5, 5)
    assert list(f.need) == ["BTCUSDT", "ETHUSDT"]  # oldest need first
    assert f.observe("BTCUSDT", 25, 25) == FORWARD and list(f.need) == ["ETHUSDT", "BTCUSDT"]  # a new gap: again
    f.forget(["BTCUSDT"])
    assert list(f.need) == ["ETHUSDT"] and "BTCUSDT" not in f.last


class FakeRest:
    """Stands in for the REST client: answers from a list, records the weights asked (no Kafka, no DB)."""

    def __init__(self, answers):
        self.answers, self.asked = list(answers), []

    async def get(self, path, params, weight=None, deferrable=False):
        assert deferrable  # a snapshot yields to the backfill
        self.asked.append((path, params["symbol"], params["limit"], weight))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_fetcher_pays_the_depth_weight_refetches_a_snapshot_too_old_and_sends_one_that_bridges():
    feed, sent, letters = DepthFeed(), [], []
    feed.observe("BTCUSDT", 10, 12)
    rest = FakeRest([RestError(500, "down"), {"lastUpdateId": 9, "bids": [], "asks": []},
                     {"lastUpdateId": "x"}, {"lastUpdateId": 11, "bids": [["1", "2"]], "asks": []}])  # fmt: skip
    fetcher = SnapshotFetcher(feed, rest, 1000, lambda snap, body: sent.append((snap, body)),
                              lambda *a: letters.append(a), retry_seconds=0)  # fmt: skip

    async def go():
        for _ in range(4):
            await fetcher.fetch("BTCUSDT")

    asyncio.run(go())
    assert [w for *_, w in rest.asked] == [50] * 4 and fetcher.weight_spent == 200
    assert fetcher.health()["weight_by_symbol"] == {"BTCUSDT": 200} and fetcher.health()["waiting_symbols"] == []
    assert (fetcher.failures, fetcher.too_old, fetcher.used) == (2, 1, 1)
    assert [s.last_update_id for s, _ in sent] == [11] and feed.need == {}
    assert letters[0][1] == "bad_depth_snapshot"
    value = orjson.loads(encode_snapshot("BTCUSDT", sent[0][1], 1000, 7, iter(["ETHUSDT", "BNBUSDT"])))
    assert value == {"e": "depthSnapshot", "s": "BTCUSDT", "lastUpdateId": 11, "bids": [["1", "2"]], "asks": [],
                     "limit": 1000, "ingestion_timestamp": 7, "queued": ["ETHUSDT", "BNBUSDT"]}  # fmt: skip
    assert DepthSnapshot.from_rest("BTCUSDT", value).queued == ("ETHUSDT", "BNBUSDT")
    for queued in ("ETHUSDT", [["ETHUSDT"]], ["eth usdt"], ["X" * 21], ["ETHUSDT"] * 10_001):
        with pytest.raises(BadData):
            DepthSnapshot.from_rest("BTCUSDT", {**value, "queued": queued})


def test_a_replay_serves_the_recorded_snapshot_the_first_one_before_it_is_reached():
    first = {"lastUpdateId": 5, "bids": [["3", "1"], ["2", "1"]], "asks": [["4", "1"]]}
    h = ReplayHistory({"BTCUSDT": first})
    assert h.depth("BTCUSDT", 1) == {"lastUpdateId": 5, "bids": [["3", "1"]], "asks": [["4", "1"]]}
    assert h.depth("ETHUSDT", 100) is None
    h.add("BTCUSDT", "depthSnapshot", {**first, "lastUpdateId": 9})
    assert h.depth("BTCUSDT", 100)["lastUpdateId"] == 9


def test_a_snapshot_too_old_is_fetched_again_only_after_a_newer_diff_and_the_retry_time():
    """A quiet book asked for a new snapshot (one past its last diff) gets the same snapshot until the
    book moves: the fetcher waits for that diff instead of spending the REST budget on copies."""
    feed = DepthFeed()
    feed.observe("BTCUSDT", 10, 12)
    feed.observe("ETHUSDT", 5, 5)
    feed.verdict("BTCUSDT", 12)
    feed.verdict("ETHUSDT", 5)
    assert feed.refresh("BTCUSDT") and feed.need == {"BTCUSDT": 13}
    rest = FakeRest([{"lastUpdateId": 12, "bids": [], "asks": []}, {"lastUpdateId": 14, "bids": [], "asks": []}])
    sent: list = []
    fetcher = SnapshotFetcher(feed, rest, 100, lambda snap, body: sent.append(snap), lambda *a: None,
                              retry_seconds=1.0)  # fmt: skip
    assert fetcher.next_symbol(0.0) == "BTCUSDT"
    asyncio.run(fetcher.fetch("BTCUSDT"))
    assert fetcher.too_old == 1 and feed.need == {"BTCUSDT": 13}
    assert fetcher.next_symbol(time.monotonic() + 60) is None  # no diff since: the same snapshot again
    assert feed.refresh("ETHUSDT") and fetcher.next_symbol(time.monotonic()) == "ETHUSDT"  # the others go on
    feed.verdict("ETHUSDT", 6)
    feed.observe("BTCUSDT", 13, 14)
    assert fetcher.next_symbol(time.monotonic() - 1) is None  # moved, but within the retry time
    assert fetcher.next_symbol(time.monotonic() + 1) == "BTCUSDT"
    asyncio.run(fetcher.fetch("BTCUSDT"))
    assert [s.last_update_id for s in sent] == [14] and feed.need == {} and len(rest.asked) == 2
    assert fetcher.next_symbol(time.monotonic()) is None and fetcher.stale == {}
