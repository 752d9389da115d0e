"""The worker against the real Kafka and TimescaleDB: exactly one row per event, through crashes,
database outages, replays and poison messages."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from decimal import Decimal

import orjson
import psycopg
import pytest

from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.services.local import TimescaleDB
from cryptomon.simulator.market import Conditions, Market
from tests.helpers import Proc, env_for, free_port, get_json, producer, running, wait_for, wait_json

pytestmark = pytest.mark.integration


def make_events(n_steps: int, symbols: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """Realistic trade/aggTrade and bookTicker payloads as the ingestion writes them."""
    market = Market(symbols, seed=42)
    trades, books = [], []
    now = int(time.time() * 1000)
    for i in range(n_steps):
        for sym in symbols:
            for kind, payload in market.step(sym, now + i, Conditions()):
                payload["ingestion_timestamp"] = now + i + 3
                (books if kind == "bookTicker" else trades).append(payload)
    return trades, books


def produce(
    bootstrap: str,
    trades: list[dict],
    books: list[dict],
    extra: list[tuple[str, bytes, bytes]] = (),
    rate: float | None = None,
) -> None:
    p = producer(bootstrap)
    msgs = [(topic_name(TRADES), t["s"].encode(), orjson.dumps(t)) for t in trades]
    msgs += [(topic_name(BOOK_TICKER), b["s"].encode(), orjson.dumps(b)) for b in books]
    msgs += list(extra)
    start = time.monotonic()
    for i, (topic, key, value) in enumerate(msgs):
        p.produce(topic, value, key)
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                p.poll(0)
                time.sleep(delay)
        elif i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def symbols_for_test(n: int = 2) -> tuple[str, ...]:
    tag = uuid.uuid4().hex[:6].upper()
    return tuple(f"W{tag}{i}USDT" for i in range(n))


def counts(dsn: str, symbols: tuple[str, ...]) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        t = conn.execute("SELECT count(*) FROM trades WHERE symbol = ANY(%s)", (list(symbols),)).fetchone()[0]
        b = conn.execute("SELECT count(*) FROM book_ticker WHERE symbol = ANY(%s)", (list(symbols),)).fetchone()[0]
    return t, b


# trades rows as the sink is given them: times in epoch ms, decimals as text
TRADE_ROWS_SQL = (
    "SELECT (extract(epoch FROM event_time) * 1000)::bigint, symbol, event_type, trade_id, price::text,"
    " quantity::text, is_buyer_maker, (extract(epoch FROM ingestion_ts) * 1000)::bigint, backfilled"
    " FROM trades WHERE symbol = ANY(%s) ORDER BY trade_id"
)


def worker_env(stack, group: str | None = None, **extra) -> tuple[dict, int]:
    port = free_port()
    return env_for(
        stack,
        CRYPTOMON_WORKER_GROUP=group or f"test-{uuid.uuid4().hex[:8]}",
        CRYPTOMON_WORKER_HEALTH_PORT=port,
        **extra,
    ), port


def test_m_messages_become_exactly_m_rows_with_exact_values(stack):
    symbols = symbols_for_test()
    trades, books = make_events(1500, symbols)
    produce(stack.kafka_bootstrap, trades, books)
    env, port = worker_env(stack)
    with running("worker", ["worker"], env):
        wait_for(lambda: counts(stack.pg_dsn, symbols) == (len(trades), len(books)), 90, what="all rows")
        health = wait_json(f"http://127.0.0.1:{port}/health", lambda b: b["consumer_lag_total"] == 0, 30, "lag 0")
    assert health["status"] == "ok" and health["db_reachable"] is True
    with psycopg.connect(stack.pg_dsn) as conn:
        rows = conn.execute(
            "SELECT symbol, event_type, trade_id, price, quantity, is_buyer_maker,"
            " (extract(epoch FROM event_time) * 1000)::bigint, (extract(epoch FROM ingestion_ts) * 1000)::bigint"
            " FROM trades WHERE symbol = ANY(%s)",
            (list(symbols),),
        ).fetchall()
        book_rows = conn.execute(
            "SELECT symbol, update_id, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty,"
            " (extract(epoch FROM ingestion_ts) * 1000)::bigint FROM book_ticker WHERE symbol = ANY(%s)",
            (list(symbols),),
        ).fetchall()
    expected = {
        (
            t["s"],
            t["e"],
            t["t"] if t["e"] == "trade" else t["a"],
            Decimal(t["p"]),
            Decimal(t["q"]),
            t["m"],
            t["T"],
            t["ingestion_timestamp"],
        )
        for t in trades
    }
    assert len(rows) == len(trades) and set(rows) == expected  # exact to the 8th decimal, to the millisecond
    assert set(book_rows) == {
        (b["s"], b["u"], Decimal(b["b"]), Decimal(b["B"]), Decimal(b["a"]), Decimal(b["A"]), b["ingestion_timestamp"])
        for b in books
    }
    assert all(str(r[3]).split(".")[1].__len__() == 8 for r in rows[:50])  # NUMERIC(20,8) keeps 8 decimals


def test_kill_9_mid_batch_then_restart_still_exactly_m_rows(stack):
    symbols = symbols_for_test()
    trades, books = make_events(4000, symbols)
    produce(stack.kafka_bootstrap, trades, books)
    env, port = worker_env(stack, CRYPTOMON_FLUSH_MAX_ROWS=200)
    first = Proc("worker-killed", ["worker"], env)
    try:
        wait_for(lambda: sum(counts(stack.pg_dsn, symbols)) > 3000, 90, what="a few batches in")
        first.stop(signal.SIGKILL)  # no flush, no commit of the last offsets
    finally:
        first.stop()
    mid = sum(counts(stack.pg_dsn, symbols))
    assert 0 < mid < len(trades) + len(books)
    with running("worker-restarted", ["worker"], env):
        wait_for(lambda: counts(stack.pg_dsn, symbols) == (len(trades), len(books)), 90, what="all rows")
        wait_json(f"http://127.0.0.1:{port}/health", lambda b: b["consumer_lag_total"] == 0, 30, "lag 0")
    assert counts(stack.pg_dsn, symbols) == (len(trades), len(books))


def test_database_down_for_20_seconds_loses_nothing_and_the_worker_survives(stack):
    symbols = symbols_for_test()
    trades, books = make_events(2000, symbols)
    env, port = worker_env(stack)
    db = TimescaleDB(stack)
    producer = threading.Thread(target=produce, args=(stack.kafka_bootstrap, trades, books), kwargs={"rate": 400})
    with running("worker-db-outage", ["worker"], env) as worker:
        producer.start()
        wait_for(lambda: sum(counts(stack.pg_dsn, symbols)) > 1000, 60, what="rows flowing")
        db.stop()
        down_at = time.monotonic()
        health = wait_json(
            f"http://127.0.0.1:{port}/health",
            lambda b: b["paused"] and not b["db_reachable"],
            30,
            "the worker to notice",
        )
        status, _ = get_json(f"http://127.0.0.1:{port}/health")
        assert status == 503
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))  # the outage itself lasts 20 s
        assert worker.alive(), "the worker exited while the database was down"
        db.start()
        producer.join(120)
        wait_for(lambda: counts(stack.pg_dsn, symbols) == (len(trades), len(books)), 120, what="all rows after")
        health = wait_json(
            f"http://127.0.0.1:{port}/health", lambda b: not b["paused"] and b["status"] == "ok", 30, "recovery"
        )
        assert worker.alive()
    assert health["db_failures"] >= 1
    assert "database unavailable" in worker.log()


def test_replay_from_offset_0_by_a_new_group_adds_no_row(stack):
    symbols = symbols_for_test()
    trades, books = make_events(500, symbols)
    produce(stack.kafka_bootstrap, trades, books)
    for attempt in range(2):  # a new group each time: both read every message from offset 0
        env, port = worker_env(stack)
        with running(f"worker-replay-{attempt}", ["worker"], env):
            wait_json(
                f"http://127.0.0.1:{port}/health",
                lambda b: b["consumer_lag"] and b["consumer_lag_total"] == 0 and sum(b["buffered"].values()) == 0,
                120,
                "the whole topic consumed",
            )
            if attempt == 0:
                with psycopg.connect(stack.pg_dsn) as conn:
                    before = conn.execute(
                        "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM book_ticker)"
                    ).fetchone()
            else:
                with psycopg.connect(stack.pg_dsn) as conn:
                    after = conn.execute(
                        "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM book_ticker)"
                    ).fetchone()
                health = get_json(f"http://127.0.0.1:{port}/health")[1]
    assert counts(stack.pg_dsn, symbols) == (len(trades), len(books))
    assert after == before
    assert health["rows_inserted"] == {"trades": 0, "book_ticker": 0}
    assert health["copy_conflicts"] >= 2  # a COPY of each table met the rows, then INSERT skipped them


def test_poison_messages_go_to_dead_letters_and_good_ones_around_them_are_inserted(stack):
    symbols = symbols_for_test(1)
    trades, books = make_events(300, symbols)
    sym = symbols[0].encode()
    good = dict(trades[0], t=10**12, e="trade")
    poison = [
        (topic_name(TRADES), sym, b"{not json"),
        (topic_name(TRADES), sym, orjson.dumps(dict(good, t="12"))),  # wrong type
        (topic_name(TRADES), sym, orjson.dumps({k: v for k, v in good.items() if k != "p"})),  # missing field
        (topic_name(TRADES), sym, orjson.dumps(dict(good, T=10**17))),  # PostgreSQL would refuse it: the contract does
        (topic_name(BOOK_TICKER), sym, orjson.dumps(dict(books[0], ingestion_timestamp="yesterday"))),
    ]
    # poison in the middle: half the good messages before, half after
    half_t, half_b = len(trades) // 2, len(books) // 2
    produce(stack.kafka_bootstrap, trades[:half_t], books[:half_b])
    produce(stack.kafka_bootstrap, [], [], extra=poison)
    produce(stack.kafka_bootstrap, trades[half_t:], books[half_b:])
    env, port = worker_env(stack)
    with running("worker-poison", ["worker"], env):
        wait_for(lambda: counts(stack.pg_dsn, symbols) == (len(trades), len(books)), 90, what="good rows")
        wait_json(f"http://127.0.0.1:{port}/health", lambda b: b["consumer_lag_total"] == 0, 30, "lag 0")
    with psycopg.connect(stack.pg_dsn) as conn:
        dead = conn.execute(
            "SELECT topic, payload, error FROM dead_letters WHERE kafka_key = %s ORDER BY kafka_offset", (sym,)
        ).fetchall()
    assert len(dead) == 5
    by_payload = {bytes(p): (t, e) for t, p, e in dead}
    assert "not JSON" in by_payload[b"{not json"][1]
    assert "wrong_type" in by_payload[poison[1][2]][1]
    assert "missing_field" in by_payload[poison[2][2]][1]
    assert "bad_time" in by_payload[poison[3][2]][1]
    assert (
        by_payload[poison[4][2]][0] == topic_name(BOOK_TICKER) and "ingestion_timestamp" in by_payload[poison[4][2]][1]
    )


def test_the_sink_writes_any_symbol_text_and_every_decimal_extreme_as_sent(stack):
    """The batch travels as array literals built by the sink: symbols that array syntax would misread
    (quotes, backslashes, commas, braces, spaces, the word NULL) and the decimal extremes come back as sent."""
    from cryptomon.worker.sink import TimescaleSink

    tag = uuid.uuid4().hex[:6].upper()
    names = [f'{tag}"Q', f"{tag}\\B", f"{tag},C", f"{{{tag}}}", f" {tag} S ", "NULL" + tag, f"{tag}'A"]
    now = int(time.time() * 1000)
    prices = ["0.00000001", "99999999.99999999", "61583.22", "1"]
    qtys = ["99999999999.99999999", "0.00000001", "92233720368", "0.5"]
    trades = [(now + i, s, "trade", 10 + i, prices[i % 4], qtys[i % 4], i % 2 == 0, now + i + 1, i % 3 == 0)
              for i, s in enumerate(names)]  # fmt: skip
    books = [(now + i, s, 20 + i, prices[i % 4], qtys[i % 4], prices[(i + 1) % 4], qtys[(i + 1) % 4])
             for i, s in enumerate(names)]  # fmt: skip
    sink = TimescaleSink(stack.pg_dsn)
    try:
        assert sink.write(TRADES, trades, [], lambda i, e: ()) == (len(names), [])
        assert sink.write(BOOK_TICKER, books, [], lambda i, e: ()) == (len(names), [])
        assert sink.write(TRADES, trades, [], lambda i, e: ()) == (0, [])  # replayed: no-ops
    finally:
        sink.close()
    with psycopg.connect(stack.pg_dsn) as conn:
        got_t = conn.execute(TRADE_ROWS_SQL, (names,)).fetchall()
        got_b = conn.execute(
            "SELECT (extract(epoch FROM ingestion_ts) * 1000)::bigint, symbol, update_id, best_bid_price::text,"
            " best_bid_qty::text, best_ask_price::text, best_ask_qty::text FROM book_ticker WHERE symbol = ANY(%s) ORDER BY update_id",
            (names,),
        ).fetchall()

    def same(sent: tuple, got: tuple, decimals: range) -> bool:  # decimals: the columns compared as numbers
        return all(
            Decimal(a) == Decimal(b) if i in decimals else a == b
            for i, (a, b) in enumerate(zip(sent, got, strict=True))
        )

    # (a symbol may start with a digit: the random tag does 10 times in 16)
    assert len(got_t) == len(trades) and all(same(s, g, range(4, 6)) for s, g in zip(trades, got_t, strict=True)), got_t
    assert len(got_b) == len(books) and all(same(s, g, range(3, 7)) for s, g in zip(books, got_b, strict=True)), got_b


def test_the_sink_copies_fresh_rows_and_writes_a_replayed_batch_by_insert_exactly_once(stack):
    """COPY first: a fresh batch goes by COPY with its dead letters, atomically; a batch half of which is
    already there makes the COPY fail and then inserts exactly its new half; the next batches go by INSERT
    until the cooldown is over; a row PostgreSQL refuses is set aside and the rest is copied."""
    from cryptomon.worker.rows import DeadLetter
    from cryptomon.worker.sink import COPY_COOLDOWN_BATCHES, TimescaleSink

    sym = symbols_for_test(1)[0]
    now = int(time.time() * 1000)
    prices = ["0.00000001", "99999999.99999999", "61583.22", "1"]
    qtys = ["99999999999.99999999", "0.00000001", "92233720368", "0.5"]

    def trade(i: int, price: str | None = None) -> tuple:
        return (now + i, sym, "trade", i, price or prices[i % 4], qtys[i % 4], i % 2 == 0, now + i + 7, i % 3 == 0)

    def letter(offset: int, error: str) -> DeadLetter:
        return DeadLetter(topic_name(TRADES), 0, 10**15 + offset, sym.encode(), b"{bad", error)

    sink = TimescaleSink(stack.pg_dsn)
    try:
        # fresh: by COPY, with two dead letters in the same transaction
        assert sink.write(TRADES, [trade(i) for i in range(100)], [letter(0, "a"), letter(1, "b")], letter) == (100, [])
        assert sink.copy_conflicts == 0
        # rows 50..99 are there: the COPY fails on them, the INSERT writes 100..149 and skips the rest
        assert sink.write(TRADES, [trade(i) for i in range(50, 150)], [], letter) == (50, [])
        assert sink.copy_conflicts == 1
        # the cooldown: these batches go by INSERT (their replayed rows do not make a COPY fail again)
        for k in range(COPY_COOLDOWN_BATCHES):
            assert sink.write(TRADES, [trade(149 + k), trade(150 + k)], [], letter) == (1, [])
        assert sink.copy_conflicts == 1
        # then COPY again: a replayed row fails it once more
        assert sink.write(TRADES, [trade(150 + COPY_COOLDOWN_BATCHES - 1), trade(1000)], [], letter) == (1, [])
        assert sink.copy_conflicts == 2
        for k in range(COPY_COOLDOWN_BATCHES):
            sink.write(TRADES, [trade(2000 + k)], [], letter)
        # a price beyond NUMERIC(20,8): that row goes aside as a dead letter, the others are copied
        batch = [trade(3000), trade(3001, "123456789012345.5"), trade(3002)]
        inserted, rejected = sink.write(TRADES, batch, [], lambda i, e: letter(3000 + i, e))
        assert inserted == 2 and [d.offset for d in rejected] == [10**15 + 3001], rejected
        assert sink.copy_conflicts == 2
    finally:
        sink.close()
    expected = [trade(i) for i in range(150 + COPY_COOLDOWN_BATCHES)] + [trade(1000)]
    expected += [trade(2000 + k) for k in range(COPY_COOLDOWN_BATCHES)] + [trade(3000), trade(3002)]
    with psycopg.connect(stack.pg_dsn) as conn:
        got = conn.execute(TRADE_ROWS_SQL, ([sym],)).fetchall()
        dead = conn.execute(
            "SELECT kafka_offset - %s, error FROM dead_letters WHERE kafka_key = %s ORDER BY kafka_offset",
            (10**15, sym.encode()),
        ).fetchall()

    def as_numbers(rows: list[tuple]) -> list[tuple]:
        return [(*r[:4], Decimal(r[4]), Decimal(r[5]), *r[6:]) for r in rows]

    assert as_numbers(got) == as_numbers(expected)  # every row once, exact to the 8th decimal and to the millisecond
    assert [d[0] for d in dead] == [0, 1, 3001] and "numeric field overflow" in dead[2][1], dead
