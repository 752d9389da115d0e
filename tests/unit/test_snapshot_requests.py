"""The book stage's snapshot requests (pure parts): when the stage asks, what the ingestion does with a
request record, and a book the bookTicker contradicts resyncing."""

from __future__ import annotations

import orjson

from cryptomon.book.keeper import BookKeeper
from cryptomon.book.snapshot_asks import AskPlan, QueueNews
from cryptomon.ingestion.depth import DepthFeed, SnapshotFetcher
from cryptomon.ingestion.snapshot_requests import ASKED, BAD, DEFERRED, NOT_FOLLOWED, WAITING, SnapshotRequests
from cryptomon.kafka.depth_requests import MISMATCH, request_value


def test_a_book_is_asked_for_after_waiting_again_while_it_waits_and_at_once_after_a_mismatch():
    plan = AskPlan(after=10, again=60)
    assert plan.due(["A"], [], 0) == []
    assert plan.due(["A"], [], 9.9) == []
    assert plan.due(["A"], [], 10) == [("A", "waiting")]
    assert plan.due(["A"], [], 69) == []
    assert plan.due(["A"], [], 70) == [("A", "waiting")]
    assert plan.due([], [], 71) == [] and plan.waiting_since == {}  # synced: forgotten
    assert plan.due(["B"], ["B"], 72) == [("B", "mismatch")]  # a mismatch asks at once, then waits as any
    assert plan.due(["B"], [], 131) == [] and plan.due(["B"], [], 132) == [("B", "waiting")]
    assert plan.due(["B"], [], 251) == [] and plan.due(["B"], [], 252) == [("B", "waiting")]  # 60 s, then 120 s


def test_books_the_ingestion_lists_as_queued_are_not_asked_for_the_others_are():
    """400 books at once, a slow ingestion syncing one every 15 s (its REST answers that slow on a busy
    machine) and listing its queue with each (if its first came after ASK_AFTER, each book would be asked
    for once): none of the queued books is asked for in 100 minutes, while a
    book it does not hold (its snapshot went by before the stage read the topic) is asked for after 10 s,
    and the queued books are asked for once the listings stop for HOLD (the ingestion restarted)."""
    plan = AskPlan(after=10, again=60, most=960, hold=60)
    books = [f"B{i:03}" for i in range(400)]
    asks: list[tuple[int, str]] = []
    for t in range(0, 6000):  # a snapshot at 5 s, 20 s, 35 s, ...: book k's at 5 + 15k
        k = (t - 5) // 15
        news = ({books[k]}, set(books[k + 1 :])) if t >= 5 and (t - 5) % 15 == 0 and k < 400 else ((), ())
        waiting = (books[k + 1 :] if t >= 5 else books) + ["LOST"]
        asks += [(t, sym) for sym, _ in plan.due(waiting, [], t, news)]
    assert asks[:3] == [(10, "LOST"), (70, "LOST"), (190, "LOST")]  # 10 s, then 60, 120, ... s
    assert {sym for _, sym in asks} == {"LOST"} and len(asks) == 10  # then 960 s apart: 1870, 2830, ... s
    late = AskPlan(after=10, again=60, hold=60)
    assert late.due(["A", "B"], [], 0, ({"C"}, {"A", "B"})) == []
    assert late.due(["A", "B"], [], 59, ({"A"}, {"B"})) == [("A", "waiting")]  # its snapshot did not sync it
    assert late.due(["A", "B"], [], 118) == []
    assert late.due(["A", "B"], [], 119) == [("A", "waiting"), ("B", "waiting")]  # B not listed for 60 s


def test_queue_news_keeps_what_a_books_latest_record_said():
    news = QueueNews()
    news.note("A", ["B", "C"])
    news.note("B", ["C", "A"])  # A is queued again (a gap after its snapshot)
    assert news.drain() == ({"B"}, {"A", "C"}) and news.drain() == (set(), set())


def test_the_ingestion_honours_a_request_for_a_followed_book_once_per_cooldown():
    clock = [100.0]
    feed, letters = DepthFeed(), []
    feed.observe("BTCUSDT", 1, 5)
    feed.verdict("BTCUSDT", 5)  # synced: no need
    fetcher = SnapshotFetcher(feed, None, 1000, lambda *a: None, lambda *a: None)  # type: ignore[arg-type]
    req = SnapshotRequests(fetcher, lambda *a: letters.append(a), cooldown=10, clock=lambda: clock[0])
    value = request_value("BTCUSDT", MISMATCH, 1)
    assert req.handle(value) == ASKED and feed.need == {"BTCUSDT": 6} and fetcher.wake.is_set()
    clock[0] += 5
    assert req.handle(value) == DEFERRED and req.handle(value) == DEFERRED  # asked once, at the cooldown's end
    req.tick()
    assert req.deferred == {"BTCUSDT": 110.0}
    feed.verdict("BTCUSDT", 6)  # the first snapshot came: no need
    clock[0] += 5
    req.tick()
    assert req.deferred == {} and feed.need == {"BTCUSDT": 6}  # the deferred request asked for another
    clock[0] += 10
    assert req.handle(value) == WAITING  # still waiting for that one: no third fetch
    assert req.handle(request_value("ETHUSDT", MISMATCH, 1)) == NOT_FOLLOWED
    for raw in (b"x" * 300, b"[1]", orjson.dumps({"s": "btc usdt", "reason": "waiting"}),
                orjson.dumps({"s": "BTCUSDT", "reason": "please"}), None):  # fmt: skip
        assert req.handle(raw) == BAD
    assert len(letters) == 5 and all(reason == "bad_depth_request" for _, reason, _, _ in letters)
    assert dict(req.outcomes) == {ASKED: 2, DEFERRED: 2, WAITING: 1, NOT_FOLLOWED: 1, BAD: 5}


def test_a_mismatch_resyncs_the_book_and_drops_its_pending_row():
    k = BookKeeper("binance.depth")
    snap = {"e": "depthSnapshot", "s": "BTCUSDT", "lastUpdateId": 10, "bids": [["100", "1"]], "asks": [["101", "1"]]}
    k.on_depth(snap, 0, 0)
    diff = {"e": "depthUpdate", "E": 1_700_000_000_000, "s": "BTCUSDT", "U": 10, "u": 11, "b": [["100", "2"]], "a": []}
    k.on_depth(diff, 0, 1)
    k.on_ticker({"u": 11, "s": "BTCUSDT", "b": "100", "B": "2", "a": "101", "A": "1"}, "t", 0, 0)
    k.on_ticker({"u": 12, "s": "BTCUSDT", "b": "100", "B": "2", "a": "101", "A": "1"}, "t", 0, 1)
    assert k.books["BTCUSDT"].check.checks == 1 and k.mismatched == []
    diff2 = {**diff, "E": 1_700_000_000_100, "U": 12, "u": 13, "b": [["100", "5"]]}  # wrong: the bookTicker says 2
    k.on_depth(diff2, 0, 2)
    k.on_ticker({"u": 14, "s": "BTCUSDT", "b": "100", "B": "2", "a": "101", "A": "1"}, "t", 0, 2)
    book = k.books["BTCUSDT"]
    assert k.mismatched == ["BTCUSDT"] and k.waiting() == ["BTCUSDT"]
    assert book.sync.stale and book.sync.resyncs == 1 and not book.pending
    assert k.checkpoint().unsynced == ["BTCUSDT"]  # a restart rebuilds it from a snapshot, not from the bad state
