"""The ingestion at the real exchange's edges, against the simulator enforcing Binance's limits: REST bodies
in pieces, 429s, a kill with open gaps, several instances, the whole market with a disconnect."""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from cryptomon.ingestion import selection, state
from cryptomon.kafka.topics import topic_name
from cryptomon.names import INGEST_STATE
from cryptomon.supervisor import sim_args
from tests.helpers import TopicTap, exchange_env, free_port, get_json, post, running, wait_for, wait_json
from tests.integration.test_ingestion import TOPICS, assert_exactly_once, finish_and_drain
from tests.integration.test_worker import worker_env

pytestmark = pytest.mark.integration


def unique_symbols(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{uuid.uuid4().hex[:4].upper()}{i}USDT" for i in range(n))


def sim_proc(port: int, env: dict, *args: str):
    return running("sim", sim_args(port, *args), env)


def ingest_env(stack, port: int, **extra) -> dict:
    return exchange_env(stack, port, CRYPTOMON_BACKOFF_INITIAL="0.2", CRYPTOMON_BACKOFF_MAX="2", **extra)


def url(port) -> str:
    return f"http://127.0.0.1:{port}"


def health_url(env: dict) -> str:
    return f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}"


def stall_for_a_gap(sim_url: str, health: str, seconds: float) -> None:
    wait_json(f"{health}/health", lambda b: sum(b["messages_produced"].values()) > 300, 30, "first events")
    post(f"{sim_url}/sim/stall?seconds={seconds}")
    wait_json(f"{health}/health", lambda b: b["gaps_found"] > 0, 30 + seconds, "the gap after the stall")


def test_pages_sent_in_small_pieces_with_pauses_lose_nothing(stack):
    """Every backfill page (~170 KB for 1,000 trades) arrives in 2 KB pieces 3 ms apart: read whole."""
    symbols = unique_symbols("CH", 2)
    port = free_port()
    env = ingest_env(stack, port, CRYPTOMON_SYMBOLS=",".join(symbols))
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    with sim_proc(port, env, "--rate", "300", "--max-steps", "3000"), running("ingest", ["ingest"], env):
        wait_for(lambda: get_json(f"{url(port)}/sim/stats")[0] == 200, 20, what="the simulator")
        post(f"{url(port)}/sim/rest?chunk_bytes=2048&chunk_pause=0.003")
        stall_for_a_gap(url(port), health_url(env), 8)
        stats, health = finish_and_drain(url(port), health_url(env), tap)
    tap.close()
    assert health["ids_unfillable"] == 0 and health["backfill_page_failures"] == 0
    assert health["events_backfilled"] > 2 * 1000  # more than a page per symbol
    streams = assert_exactly_once(stats, tap.messages)
    assert sum(1 for evs in streams.values() for d in evs if d.get("backfilled")) == health["events_backfilled"]


def test_a_burst_of_429s_sends_nothing_inside_retry_after_and_backfills_everything(stack):
    """The exchange allows 60 weight per 2 s; the ingestion's own budget would allow far more: it gets
    429s, and then sends nothing until Retry-After has passed (a call inside would be a 418)."""
    symbols = unique_symbols("RL", 2)
    port = free_port()
    env = ingest_env(stack, port, CRYPTOMON_SYMBOLS=",".join(symbols))
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    args = ("--rate", "300", "--max-steps", "2500", "--weight-limit", "60", "--weight-window", "2")
    with sim_proc(port, env, *args), running("ingest", ["ingest"], env):
        stall_for_a_gap(url(port), health_url(env), 6)
        stats, health = finish_and_drain(url(port), health_url(env), tap)
    tap.close()
    assert stats["rest"]["429"] >= 1 and stats["rest"]["418"] == 0
    assert health["rest"]["rate_limited_429"] == stats["rest"]["429"] and health["rest"]["banned_418"] == 0
    assert health["ids_unfillable"] == 0
    assert_exactly_once(stats, tap.messages)


def saved_gaps(bootstrap: str, symbols: tuple[str, ...]) -> dict:
    saved = state.load(bootstrap, topic_name(INGEST_STATE))
    return {key: gaps for key, (_, gaps) in saved.items() if key[0] in symbols and gaps}


def test_a_kill_with_open_gaps_fills_them_after_the_restart(stack):
    """Every REST answer hangs, so the gap after a stall stays open; the state topic records it; kill -9;
    the exchange answers again; a new ingestion reads the state back and fills the gap."""
    symbols = unique_symbols("KG", 2)
    port = free_port()
    env = ingest_env(stack, port, CRYPTOMON_SYMBOLS=",".join(symbols), CRYPTOMON_STATE_INTERVAL="0.5")
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    with sim_proc(port, env, "--rate", "300", "--max-steps", "3000"):
        wait_for(lambda: get_json(f"{url(port)}/sim/stats")[0] == 200, 20, what="the simulator")
        post(f"{url(port)}/sim/rest?delay=600")
        with running("ingest", ["ingest"], env) as first:
            stall_for_a_gap(url(port), health_url(env), 3)
            gaps = wait_for(lambda: saved_gaps(stack.kafka_bootstrap, symbols), 30, what="gaps in the state topic")
            first.stop(signal.SIGKILL)
        post(f"{url(port)}/sim/rest?delay=0")
        with running("ingest", ["ingest"], env):
            stats, health = finish_and_drain(url(port), health_url(env), tap)
    tap.close()
    saved = sum(end - start + 1 for spans in gaps.values() for start, end in spans)
    assert health["resumed_from_kafka"] == 2 * len(symbols)
    assert health["events_backfilled"] >= saved and health["ids_unfillable"] == 0
    assert_exactly_once(stats, tap.messages)
    assert saved_gaps(stack.kafka_bootstrap, symbols) == {}  # the restarted run recorded them as filled


def test_two_instances_share_the_symbols_and_together_store_every_event_once(stack):
    symbols = unique_symbols("TI", 6)
    while not all(selection.mine(list(symbols), i, 2) for i in range(2)):  # random names: 1 in 32 all land on one
        symbols = unique_symbols("TI", 6)
    port = free_port()
    envs = [
        ingest_env(stack, port, CRYPTOMON_SYMBOLS=",".join(symbols), CRYPTOMON_INGEST_INSTANCE=f"{i}/2")
        for i in range(2)
    ]
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    with sim_proc(port, envs[0], "--rate", "600", "--max-steps", "400"):
        wait_for(lambda: get_json(f"{url(port)}/sim/stats")[0] == 200, 20, what="the simulator")
        post(f"{url(port)}/sim/pause")  # the market starts once both instances listen
        with running("ingest-0", ["ingest"], envs[0]), running("ingest-1", ["ingest"], envs[1]):
            shares = [
                wait_json(f"{health_url(e)}/health", lambda b: b["connected"], 30, "an instance to connect")["symbols"]
                for e in envs
            ]
            post(f"{url(port)}/sim/resume")
            stats = wait_json(f"{url(port)}/sim/stats", lambda b: b["done"], 60, "simulator to finish")
            healths = [
                wait_json(f"{health_url(e)}/health", lambda b: b["ids_pending_backfill"] == 0
                          and b["producer_queue"] == 0 and b["seconds_since_last_message"] > 0.5, 60, "delivery")
                for e in envs
            ]  # fmt: skip
            tap.drain(quiet=1.5)
    tap.close()
    assert sorted(shares) != [0, 6] and sum(shares) == 6  # both have a share, none twice
    assert all(h["gaps_found"] == 0 for h in healths)
    produced = [sum(h["messages_produced"].values()) for h in healths]
    assert sum(produced) == sum(n for v in stats["symbols"].values() for n in v["generated"].values())
    assert_exactly_once(stats, tap.messages)


def test_the_whole_market_with_a_disconnect_reaches_the_database_exactly(stack):
    """400 TRADING USDT pairs (of 404 listed) followed through the pattern *USDT over two connections
    (1,200 streams > 1,024), every connection dropped halfway; the worker stores it all. The REST budget is
    raised on both sides (the 800 gaps need ~11,600 weight: two minutes at Binance's 6,000) to keep the
    test short; the limits themselves are tested above."""
    port = free_port()
    env = ingest_env(stack, port, CRYPTOMON_SYMBOLS="*USDT", CRYPTOMON_REST_WEIGHT_BUDGET="100000")
    wenv, _ = worker_env(stack)
    t0 = datetime.now(UTC)
    args = (
        "--market",
        "whole",
        "--rate",
        "800",
        "--max-steps",
        "40",
        "--book-updates",
        "1",
        "--weight-limit",
        "200000",
    )
    with sim_proc(port, env, *args), running("ingest", ["ingest"], env), running("worker", ["worker"], wenv):
        wait_for(lambda: get_json(f"{url(port)}/sim/stats")[0] == 200, 30, what="the simulator")
        post(f"{url(port)}/sim/pause")
        health = wait_json(f"{health_url(env)}/health", lambda b: b["connected"] and b["symbols"] == 400, 60, "connect")
        post(f"{url(port)}/sim/resume")
        wait_json(f"{url(port)}/sim/stats", lambda b: sum(v["steps"] for v in b["symbols"].values()) >= 8000, 60,
                  "half of the market")  # fmt: skip
        assert post(f"{url(port)}/sim/drop")["dropped"] == 2
        stats = wait_json(f"{url(port)}/sim/stats", lambda b: b["done"], 120, "simulator to finish")
        health = wait_json(f"{health_url(env)}/health", lambda b: b["ids_pending_backfill"] == 0
                           and b["producer_queue"] == 0 and b["seconds_since_last_message"] > 0.5, 120, "backfill")  # fmt: skip
        expected = {
            (sym, kind): (v[ids][0], v[ids][1], v[ids][1] - v[ids][0] + 1)
            for sym, v in stats["symbols"].items()
            for kind, ids in (("trade", "trade_ids"), ("aggTrade", "agg_ids"))
        }
        books = health["messages_produced"]["bookTicker"]

        def stored():
            with psycopg.connect(stack.pg_dsn) as conn:
                rows = conn.execute(
                    "SELECT symbol, event_type, min(trade_id), max(trade_id), count(*) FROM trades "
                    "WHERE ingestion_ts >= %s GROUP BY 1, 2", (t0,)  # not event_time: replays of the real
                    # captures shifted to now, earlier in the session, stored BTCUSDT trades minutes ahead
                ).fetchall()  # fmt: skip
                n_books = conn.execute("SELECT count(*) FROM book_ticker WHERE ingestion_ts >= %s", (t0,)).fetchone()
            return {(s, k): (lo, hi, n) for s, k, lo, hi, n in rows}, n_books[0]

        wait_for(lambda: stored() == (expected, books), 120, interval=1.0, what="every event in the database")
    assert len(expected) == 800 and health["connections"][1]["streams"] > 0
    # gaps: the symbols that traded while the connections were down (each trades ~2 steps/s)
    assert health["gaps_found"] > 100 and health["events_backfilled"] >= health["gaps_found"]
    assert health["ids_unfillable"] == 0 and health["rest"]["banned_418"] == 0
    assert books < sum(v["generated"]["bookTicker"] for v in stats["symbols"].values())  # missed while dropped
