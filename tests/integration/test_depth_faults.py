"""The order book's faults, on the real stack: the simulator (three books) -> ingest (CRYPTOMON_DEPTH=100ms)
-> binance.depth -> cryptomon book -> TimescaleDB.

The book stage starts after the ingestion sent its snapshots: it asks for new ones (binance.depth_requests)
and syncs every book. Then the simulator's faults on demand, injected into one book: a dropped
diff, diffs out of order, a snapshot older than the diffs buffered, a snapshot request answered 429, a
diff with a wrong best-bid quantity (its ids in order), a duplicated diff. Each lost or reordered diff ends
in a resync of that book only (the ingestion fetches a snapshot that bridges the diffs, the book stage
syncs on it); the wrong quantity is caught by Binance's own check (every top equal to the bookTicker at or
below its update id) and ends in a resync on a snapshot the book stage asks for; the duplicate is dropped.
The other books never resync, their stored rows go on, and the check finds no other mismatch."""

from __future__ import annotations

import time
import urllib.request
import uuid

import psycopg
import pytest

from cryptomon.supervisor import sim_args
from tests.helpers import env_for, exchange_env, free_port, running, wait_for, wait_json

pytestmark = pytest.mark.integration
# symbols of this test only: the real-data tests store books of BTCUSDT and ETHUSDT at the same times
TAG = uuid.uuid4().hex[:5].upper()
SYMBOLS = tuple(f"DF{TAG}{i}USDT" for i in range(3))
FAULTY, OTHERS = SYMBOLS[0], SYMBOLS[1:]
# what each fault takes: the faults injected one after the other (a drop after a kept snapshot or a 429
# makes the ingestion fetch one); how many resyncs of the faulty book it ends in
FAULTS = [
    (("depth_drop",), 1),
    (("depth_reorder",), 1),
    (("depth_old_snapshot", "depth_drop"), 1),
    (("depth_429", "depth_drop"), 1),
    (("depth_corrupt",), 1),
    (("depth_duplicate",), 0),
]


def inject(port: int, kind: str, symbol: str = FAULTY) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/sim/inject?kind={kind}&symbol={symbol}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def update_ids(dsn: str, symbol: str, since_ms: int) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT last_update_id FROM order_book_snapshots WHERE symbol = %s AND "
            "snapshot_time >= to_timestamp(%s / 1000.0) ORDER BY snapshot_time", (symbol, since_ms)
        ).fetchall()  # fmt: skip
    return [r[0] for r in rows]


def test_each_depth_fault_resyncs_that_book_only_and_every_book_stays_right(stack):
    sim_port, book_port = free_port(), free_port()
    t0 = time.time_ns() // 1_000_000
    env = exchange_env(stack, sim_port, CRYPTOMON_SYMBOLS=",".join(SYMBOLS), CRYPTOMON_DEPTH="100ms",
                       CRYPTOMON_DEPTH_SNAPSHOT_LIMIT=100)  # fmt: skip
    book_env = env_for(stack, CRYPTOMON_BOOK_GROUP=f"test-faults-{uuid.uuid4().hex[:6]}",
                       CRYPTOMON_BOOK_HEALTH_PORT=book_port, CRYPTOMON_BOOK_START_LOOKBACK_SECONDS=0)  # fmt: skip
    books_url = f"http://127.0.0.1:{book_port}/health"
    ingest_url = f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}/health"
    stats_url = f"http://127.0.0.1:{sim_port}/sim/stats"

    def books() -> dict:
        return wait_json(books_url, lambda b: True, 10, "the book stage's health")["books"]

    def checked_again(before: dict) -> bool:
        now = books()
        return all(now.get(s, {}).get("synced") and now[s]["checks"] > before.get(s, {}).get("checks", 0) + 10
                   for s in SYMBOLS)  # fmt: skip

    with (
        running("sim-faults", sim_args(sim_port, "--rate", "60"), env),
        running("ingest-faults", ["ingest"], env),
    ):
        wait_json(ingest_url, lambda b: (b.get("depth") or {}).get("used") == 3, 60, "the ingestion's 3 snapshots")
        with running("book-faults", ["book"], book_env):  # after the snapshots: its books ask for new ones
            wait_for(lambda: checked_again({}), 120, 0.5, "every book synced and checked")
            asked = wait_json(books_url, lambda b: True, 10, "health")["snapshots_asked"]
            rows_since = lambda ms, n: all(len(update_ids(stack.pg_dsn, s, ms)) >= n for s in SYMBOLS)  # noqa: E731
            wait_for(lambda: rows_since(t0, 3), 60, 0.5, "3 rows of every book")
            faults_ms = time.time_ns() // 1_000_000
            for kinds, resyncs in FAULTS:
                last_fault_ms = time.time_ns() // 1_000_000
                before = books()
                for kind in kinds:
                    if kind == "depth_drop" and len(kinds) > 1:  # the kept snapshot is older than the diffs to come
                        wait_for(lambda b=before: books()[FAULTY]["last_update_id"] > b[FAULTY]["last_update_id"],
                                 30, 0.2, "the book to move on")  # fmt: skip
                    inject(sim_port, kind)
                wait_json(stats_url, lambda b, k=kinds: all(b["depth_faults"].get(x) for x in k), 30, f"{kinds} sent")
                wait_for(lambda b=before, n=resyncs: books()[FAULTY]["resyncs"] == b[FAULTY]["resyncs"] + n
                         and checked_again(b), 90, 0.5, f"{kinds}: {FAULTY} resynced and checked again")  # fmt: skip
            wait_for(lambda: rows_since(last_fault_ms, 3), 60, 0.5, "3 rows of every book after the last fault")
            after = books()
            health = wait_json(books_url, lambda b: True, 10, "health")
        ingest, sim = wait_json(ingest_url, lambda b: True, 10, "health"), wait_json(stats_url, lambda b: True, 10, "")
    assert sim["depth_faults"] == {"depth_drop": 3, "depth_reorder": 1, "depth_old_snapshot": 1, "depth_429": 1,
                                   "depth_corrupt": 1, "depth_duplicate": 1}  # fmt: skip
    # the late book stage asked once for each book; then once more, after the wrong quantity
    assert asked == 3 and health["snapshots_asked"] == 4
    assert after[FAULTY]["resyncs"] == 5 and after[FAULTY]["synced"] and not after[FAULTY]["stale"]
    assert after[FAULTY]["mismatches"] >= 1  # the wrong quantity, and only it
    assert all(after[s]["resyncs"] == 0 and after[s]["mismatches"] == 0 and after[s]["checks"] > 50 for s in OTHERS)
    depth = ingest["depth"]
    assert depth["gaps"] == 4 and depth["too_old"] >= 1 and depth["failures"] >= 1  # the 429, waited out
    # a request within 10 s of the last for its book is deferred to then, not dropped
    assert depth["requests"]["asked"] == 4 and set(depth["requests"]) <= {"asked", "deferred"}
    assert depth["used"] == 3 + 4 + 4
    # weight 5 a snapshot of 100 levels: the other books at least two each (the first, the one asked for)
    weights = depth["weight_by_symbol"]
    assert sum(weights.values()) == depth["weight_spent"] and depth["waiting_symbols"] == []
    assert (
        all(weights[s] >= 10 and weights[s] % 5 == 0 for s in OTHERS) and weights[FAULTY] > max(weights.values()) - 1
    ), weights
    for s in SYMBOLS:  # every book's rows go on, in update-id order, before the faults and after the last one
        ids = update_ids(stack.pg_dsn, s, t0)
        before_faults = len(ids) - len(update_ids(stack.pg_dsn, s, faults_ms))
        assert before_faults >= 3 and len(update_ids(stack.pg_dsn, s, last_fault_ms)) >= 3, s
        assert ids == sorted(set(ids)), s
