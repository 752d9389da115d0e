"""The order book's input, end to end on real data: Binance's real BTCUSDT and ETHUSDT frames (trade,
bookTicker, depth@100ms and the REST snapshot the recorder took) replayed by `feed replay`, which serves
the recorded snapshot at /api/v3/depth; `cryptomon ingest` with CRYPTOMON_DEPTH=100ms. In binance.depth:
every diff of the files once and in order, one snapshot per symbol after the diffs it bridges; the books
rebuilt from the topic alone agree with every bookTicker in binance.book_ticker (Binance's own check) and
with a book rebuilt from the files by the independent reconstruction of the unit tests."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import pytest

from cryptomon.binance.book_check import TopOfBookCheck
from cryptomon.binance.orderbook import DepthDiff, DepthSnapshot, DepthSync, Step
from cryptomon.binance.schema import DEPTH, DEPTH_SNAPSHOT
from cryptomon.kafka.clients import read_to_end
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_DEPTH, BOOK_TICKER, SESSION_HEADER
from cryptomon.simulator.replay import first_event_ms, read_captures, shift_to_now
from cryptomon.supervisor import replay_args
from tests.helpers import FUTURE_SKEW, exchange_env, free_port, real_capture, running, wait_for, wait_json
from tests.unit.test_orderbook import NaiveBook, as_decimals

pytestmark = pytest.mark.integration
SYMBOLS = ("BTCUSDT", "ETHUSDT")


def depth_in_files(captures: list, shift: int) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Each symbol's diffs in the captures, in order (event times shifted as the replay shifts them), and
    the depth snapshot recorded for it."""
    files: dict[str, list[dict]] = defaultdict(list)
    recorded: dict[str, dict] = {}
    for _, sym, kind, d in read_captures(captures, shift_ms=shift, snapshots=True):
        if kind.startswith("depth@"):
            files[sym].append(d)
        elif kind == DEPTH_SNAPSHOT:
            recorded[sym] = d
    return files, recorded


def feed_ticker(check: TopOfBookCheck, ticker: dict) -> list:
    """A bookTicker record into the check; the mismatches it resolved."""
    return check.on_ticker(ticker["u"], (ticker["b"], ticker["B"]), (ticker["a"], ticker["A"]))


def test_real_depth_through_the_ingestion_rebuilds_books_binance_s_bookticker_agrees_with(stack):
    captures = [real_capture("btcusdt_20240808.gz"), real_capture("ethusdt_20240808.gz")]
    port = free_port()
    env = exchange_env(stack, port, CRYPTOMON_SYMBOLS=",".join(SYMBOLS), CRYPTOMON_DEPTH="100ms", **FUTURE_SKEW)
    t0 = time.time_ns() // 1_000_000
    shift = shift_to_now(first_event_ms(captures), t0)  # what --shift-to-now does
    files, recorded = depth_in_files(captures, shift)
    health = env["CRYPTOMON_INGEST_HEALTH_PORT"]

    sessions: dict[tuple[str, str], set] = defaultdict(set)  # (symbol, "e") -> the session headers seen

    def since_t0(role: str) -> dict[str, list[dict]]:
        """This run's records of a topic, per symbol, in their partition's order."""
        messages, _ = read_to_end(stack.kafka_bootstrap, topic_name(role), "test-depth")
        out: dict[str, list[dict]] = defaultdict(list)
        for m in messages:
            v = orjson.loads(m.value())
            if v.get("s") in SYMBOLS and v.get("ingestion_timestamp", 0) >= t0:
                sessions[(v["s"], v.get("e", "bookTicker"))].add(dict(m.headers() or ()).get(SESSION_HEADER))
                out[v["s"]].append(v)
        return out

    def diffs_in_topic() -> dict[str, int]:
        return {s: sum(1 for v in r if v["e"] == DEPTH) for s, r in since_t0(BOOK_DEPTH).items()}

    replay = replay_args(captures, port, "--rate", "0", "--shift-minutes", str(shift // 60_000))
    with running("replay-depth", replay, env), running("ingest-depth", ["ingest"], env):
        wait_json(f"http://127.0.0.1:{port}/sim/stats", lambda b: b["done"], 120, "the replay to finish")
        wait_for(lambda: diffs_in_topic() == {s: len(files[s]) for s in SYMBOLS}, 60, 0.5, "every diff in Kafka")
        body = wait_json(f"http://127.0.0.1:{health}/health", lambda b: (b.get("depth") or {}).get("used") == 2,
                         30, "a snapshot of each book used")  # fmt: skip
    assert body["depth"]["too_old"] == 0 and body["depth"]["gaps"] == 0 and body["depth"]["weight_spent"] == 2 * 50
    depth, tickers = since_t0(BOOK_DEPTH), since_t0(BOOK_TICKER)
    for s in SYMBOLS:
        records = depth[s]
        assert [(v["U"], v["u"]) for v in records if v["e"] == DEPTH] == [(d["U"], d["u"]) for d in files[s]]
        (snapshot,) = [v for v in records if v["e"] == DEPTH_SNAPSHOT]
        assert snapshot["lastUpdateId"] == recorded[s]["lastUpdateId"] and snapshot["bids"] == recorded[s]["bids"]
        # the diffs and bookTickers came over one connection session, and say so in a header (not the value)
        (session,) = sessions[(s, DEPTH)] | sessions[(s, "bookTicker")]
        assert session.isdigit() and sessions[(s, DEPTH_SNAPSHOT)] == {None}
        # the book rebuilt from the topic alone, the bookTickers coming in update-id order beside it
        sync, check, mismatches, tops = DepthSync(s), TopOfBookCheck(), [], 0
        pending = iter(tickers[s])
        ticker = next(pending, None)
        for v in records:
            if v["e"] == DEPTH_SNAPSHOT:
                step = sync.on_snapshot(DepthSnapshot.from_rest(s, v))
            else:
                while ticker is not None and ticker["u"] <= v["u"]:
                    mismatches += feed_ticker(check, ticker)
                    ticker = next(pending, None)
                step = sync.on_diff(DepthDiff.from_payload(v, s))
            if step in (Step.APPLIED, Step.SYNCED):
                book, tops = sync.book, tops + 1
                if m := check.on_book(book.last_update_id, book.best_bid(), book.best_ask()):
                    mismatches.append(m)
        while ticker is not None:
            mismatches += feed_ticker(check, ticker)
            ticker = next(pending, None)
        assert sync.synced and sync.resyncs == 0 and mismatches == []
        # every top checked (the diffs buffered before the snapshot came are checked as one, at the sync)
        assert check.checks + check.waiting == tops and check.waiting <= 1 and check.unchecked == 0
        assert check.checks > len(files[s]) // 2, (s, check.checks)  # the snapshot comes when the ingestion fetched it
        oracle = NaiveBook(recorded[s])  # the files' own book at the same update id
        for d in files[s]:
            oracle.apply(d)
        assert sync.book.last_update_id == oracle.id
        bids, asks = sync.book.top(20)
        assert (as_decimals(bids), as_decimals(asks)) == oracle.top(20)


def test_cryptofeed_s_raw_recording_replays_its_rest_snapshots_and_the_books_rebuild(stack):
    """BINANCE-ee25be.0, cryptofeed's raw recording (3 spot symbols, depth, aggTrade and kline, and a REST
    depth snapshot each, `<url> -> <ts>: <body>`): feed replay serves those snapshots, the ingestion syncs
    the three books on them, and the books rebuilt from binance.depth alone equal the files' own."""
    capture = [real_capture("BINANCE-ee25be.0")]
    symbols = ("BTCUSDT", "ETHUSDT", "DOTUSDT")
    port = free_port()
    env = exchange_env(stack, port, CRYPTOMON_SYMBOLS=",".join(symbols), CRYPTOMON_DEPTH="100ms", **FUTURE_SKEW)
    t0 = time.time_ns() // 1_000_000
    shift = shift_to_now(first_event_ms(capture), t0)
    files, recorded = depth_in_files(capture, shift)
    assert set(recorded) == set(symbols)
    health = env["CRYPTOMON_INGEST_HEALTH_PORT"]
    replay = replay_args(capture, port, "--rate", "0", "--shift-minutes", str(shift // 60_000))
    with running("replay-cryptofeed", replay, env), running("ingest-cryptofeed", ["ingest"], env):
        wait_json(f"http://127.0.0.1:{port}/sim/stats", lambda b: b["done"], 120, "the replay to finish")
        wait_json(f"http://127.0.0.1:{health}/health", lambda b: (b.get("depth") or {}).get("used") == 3,
                  60, "a snapshot of each book used")  # fmt: skip
        messages, _ = read_to_end(stack.kafka_bootstrap, topic_name(BOOK_DEPTH), "test-depth-cf")
    records: dict[str, list[dict]] = defaultdict(list)
    for m in messages:
        v = orjson.loads(m.value())
        if v.get("s") in symbols and v.get("ingestion_timestamp", 0) >= t0:
            records[v["s"]].append(v)
    for s in symbols:
        assert [(v["U"], v["u"]) for v in records[s] if v["e"] == DEPTH] == [(d["U"], d["u"]) for d in files[s]]
        sync = DepthSync(s)
        for v in records[s]:
            if v["e"] == DEPTH_SNAPSHOT:
                assert v["lastUpdateId"] == recorded[s]["lastUpdateId"]
                sync.on_snapshot(DepthSnapshot.from_rest(s, v))
            else:
                sync.on_diff(DepthDiff.from_payload(v, s))
        oracle = NaiveBook(recorded[s])
        for d in files[s]:
            oracle.apply(d)
        assert sync.synced and sync.resyncs == 0 and sync.book.last_update_id == oracle.id
        bids, asks = sync.book.top(20)
        assert (as_decimals(bids), as_decimals(asks)) == oracle.top(20)
