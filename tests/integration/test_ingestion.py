"""Ingestion against the exchange simulator and the real Kafka broker."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter, defaultdict

import httpx
import pytest

from cryptomon.binance.schema import KINDS, SEQ_FIELD
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, DEADLETTER, TRADES
from cryptomon.services.local import KafkaBroker
from tests.helpers import TopicTap, decode, exchange_env, free_port, get_json, post, running, wait_for, wait_json

pytestmark = pytest.mark.integration

TOPICS = [topic_name(TRADES), topic_name(BOOK_TICKER), topic_name(DEADLETTER)]


def start_pair(stack, steps: int, rate: float, scenario: str = "calm", **ingest_env):
    sim_port = free_port()
    env = exchange_env(
        stack,
        sim_port,
        CRYPTOMON_BACKOFF_INITIAL="0.2",
        CRYPTOMON_BACKOFF_MAX="2",
        **ingest_env,
    )
    sim = running(
        "sim",
        [
            "feed",
            "sim",
            "--port",
            str(sim_port),
            "--rate",
            str(rate),
            "--max-steps",
            str(steps),
            "--scenario",
            scenario,
        ],
        env,
    )
    ing = running("ingest", ["ingest"], env)
    return sim, ing, f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}"


def sim_totals(stats: dict) -> dict[tuple[str, str], int]:
    return {(sym, kind): v["generated"][kind] for sym, v in stats["symbols"].items() for kind in KINDS}


def by_stream(messages) -> dict[tuple[str, str], list[dict]]:
    out = defaultdict(list)
    for m in messages:
        if m.topic() == topic_name(DEADLETTER):
            continue
        d = decode(m)
        kind = d.get("e", "bookTicker")
        out[(d["s"], kind)].append(d)
    return out


def assert_exactly_once(stats: dict, messages) -> dict[tuple[str, str], list[dict]]:
    """Every trade/aggTrade id the simulator generated is in Kafka exactly once."""
    streams = by_stream(messages)
    for sym, v in stats["symbols"].items():
        for kind, span in (("trade", v["trade_ids"]), ("aggTrade", v["agg_ids"])):
            ids = Counter(d[SEQ_FIELD[kind]] for d in streams[(sym, kind)])
            assert set(ids) == set(range(span[0], span[1] + 1)), f"{sym} {kind}: ids missing or extra"
            assert max(ids.values()) == 1, f"{sym} {kind}: duplicated ids"
    return streams


def finish_and_drain(sim_url: str, health_url: str, tap: TopicTap) -> tuple[dict, dict]:
    """Wait for the simulator to finish and the ingestion to backfill and deliver everything; read it all."""
    stats = wait_json(f"{sim_url}/sim/stats", lambda b: b["done"], 120, "simulator to finish")
    health = wait_json(
        f"{health_url}/health",
        lambda b: b["ids_pending_backfill"] == 0 and b["producer_queue"] == 0 and b["seconds_since_last_message"] > 0.5,
        60,
        "backfill to complete",
    )
    tap.drain(quiet=1.5)
    return stats, health


def test_events_arrive_exactly_once_routed_keyed_and_in_order(stack):
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    sim, ing, sim_url, health_url = start_pair(stack, steps=400, rate=600)
    with sim, ing:
        stats = wait_json(f"{sim_url}/sim/stats", lambda b: b["done"], 60, "simulator to finish")
        total = sum(sim_totals(stats).values())
        wait_json(
            f"{health_url}/health",
            lambda b: sum(b["messages_delivered"].values()) == total,
            30,
            "ingestion to deliver everything",
        )
        messages = tap.read(lambda ms: len(ms) >= total, 30)
    tap.close()
    assert len(messages) == total
    streams = assert_exactly_once(stats, messages)
    partitions = defaultdict(set)
    for m in messages:
        d = decode(m)
        kind = d.get("e", "bookTicker")
        assert m.topic() == (topic_name(BOOK_TICKER) if kind == "bookTicker" else topic_name(TRADES))
        assert m.key() == d["s"].encode()
        partitions[(m.topic(), d["s"])].add(m.partition())
        assert isinstance(d["ingestion_timestamp"], int)
        assert abs(d["ingestion_timestamp"] / 1000 - time.time()) < 120
        assert "backfilled" not in d
    assert all(len(p) == 1 for p in partitions.values()), "one partition per symbol and topic"
    for (sym, kind), events in streams.items():
        seqs = [d[SEQ_FIELD[kind]] for d in events]  # Kafka order within the partition
        assert seqs == sorted(seqs), f"{sym} {kind} out of order"
        assert len(events) == sim_totals(stats)[(sym, kind)]


def test_server_drop_and_stall_are_backfilled(stack):
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    sim, ing, sim_url, health_url = start_pair(stack, steps=1500, rate=150, CRYPTOMON_WS_STALE_AFTER="2")
    with sim, ing:
        wait_json(f"{health_url}/health", lambda b: sum(b["messages_produced"].values()) > 300, 30, "first events")
        assert post(f"{sim_url}/sim/drop")["dropped"] == 1
        wait_json(f"{health_url}/health", lambda b: b["reconnects"] >= 1 and b["connected"], 30, "reconnect")
        post(f"{sim_url}/sim/stall?seconds=4")  # silent but open: the ingestion must notice by itself
        wait_json(f"{health_url}/health", lambda b: b["reconnects"] >= 2 and b["connected"], 30, "stale reconnect")
        stats, health = finish_and_drain(sim_url, health_url, tap)
    tap.close()
    assert health["gaps_found"] >= 2 and health["events_backfilled"] > 0 and health["ids_unfillable"] == 0
    streams = assert_exactly_once(stats, tap.messages)
    backfilled = sum(1 for events in streams.values() for d in events if d.get("backfilled"))
    assert backfilled == health["events_backfilled"]
    assert health["book_ticker_gaps"] >= 3  # counted per symbol and reconnect, cannot be backfilled


def test_ingestion_killed_and_restarted_backfills_what_it_missed(stack):
    """kill -9 of the ingestion mid-stream (its producer queue lost with it), the exchange streaming on
    while it is down: the restarted ingestion continues after the last ids in Kafka and backfills the
    rest, so every trade/aggTrade id of the run is in Kafka exactly once."""
    symbols = tuple(f"RS{uuid.uuid4().hex[:4].upper()}{i}USDT" for i in range(2))
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    sim, ing, sim_url, health_url = start_pair(stack, steps=1500, rate=150, CRYPTOMON_SYMBOLS=",".join(symbols))
    with sim, ing as first:
        wait_json(f"{health_url}/health", lambda b: sum(b["messages_produced"].values()) > 300, 30, "first events")
        first.stop(signal.SIGKILL)
        steps = get_json(f"{sim_url}/sim/stats")[1]["symbols"][symbols[0]]["steps"]
        wait_json(
            f"{sim_url}/sim/stats",
            lambda b: b["symbols"][symbols[0]]["steps"] >= steps + 150,
            30,
            "the exchange to stream on for 2 s without the ingestion",
        )
        with running("ingest-restarted", ["ingest"], first.env) as second:
            stats, health = finish_and_drain(sim_url, health_url, tap)
    tap.close()
    assert health["resumed_from_kafka"] == 2 * len(symbols) and health["baseline_resets"] == 0
    assert health["events_backfilled"] > 0 and health["ids_unfillable"] == 0
    assert "resuming after the last ids in Kafka" in second.log()
    streams = assert_exactly_once(stats, [m for m in tap.messages if decode(m).get("s") in symbols])
    backfilled = sum(1 for events in streams.values() for d in events if d.get("backfilled"))
    assert backfilled == health["events_backfilled"]


def test_malformed_duplicated_and_reordered_frames(stack):
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    sim, ing, sim_url, health_url = start_pair(stack, steps=600, rate=200)
    with sim, ing:
        wait_json(
            f"{health_url}/health",
            lambda b: b["connected"] and sum(b["messages_produced"].values()) > 100,
            30,
            "first events",
        )
        post(f"{sim_url}/sim/inject?kind=malformed&count=10")
        post(f"{sim_url}/sim/inject?kind=duplicate&count=7")
        post(f"{sim_url}/sim/inject?kind=reorder&count=5")
        stats = wait_json(f"{sim_url}/sim/stats", lambda b: b["done"], 60, "simulator to finish")
        total = sum(sim_totals(stats).values())
        health = wait_json(
            f"{health_url}/health",
            lambda b: sum(b["messages_delivered"].values()) == total + 10,
            30,
            "all good events and 10 dead letters delivered",
        )
        tap.read(lambda ms: len(ms) >= total + 10, 30)
    tap.close()
    assert stats["malformed_sent"] == 10 and stats["duplicates_sent"] == 7 and stats["reordered"] == 5
    assert health["duplicates_dropped"] == 7
    assert sum(health["dead_letters"].values()) == 10
    assert {"not_json", "unknown_stream", "wrong_type", "missing_field", "bad_envelope"} == set(health["dead_letters"])
    dead = [decode(m) for m in tap.messages if m.topic() == topic_name(DEADLETTER)]
    assert len(dead) == 10 and all(d["source"] == "ingestion" and d["raw"] and d["detail"] for d in dead)
    assert any(d["raw"] == "this is not json" for d in dead)
    assert_exactly_once(stats, tap.messages)
    assert len([m for m in tap.messages if m.topic() != topic_name(DEADLETTER)]) == total


def test_broker_restart_loses_nothing_acknowledged(stack):
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    broker = KafkaBroker(stack)
    sim, ing, sim_url, health_url = start_pair(stack, steps=1200, rate=150)
    with sim, ing:
        wait_json(f"{health_url}/health", lambda b: sum(b["messages_delivered"].values()) > 300, 30, "first events")
        broker.stop()  # the ingestion keeps receiving frames and queues them while the broker is down
        broker.start()
        stats = wait_json(f"{sim_url}/sim/stats", lambda b: b["done"], 120, "simulator to finish")
        total = sum(sim_totals(stats).values())
        health = wait_json(
            f"{health_url}/health",
            lambda b: sum(b["messages_delivered"].values()) >= total,
            90,
            "everything delivered after the restart",
        )
        tap.read(lambda ms: len(ms) >= total, 60)
        tap.drain(quiet=1.0)
    tap.close()
    assert health["ids_unfillable"] == 0
    assert sum(health["messages_delivered"].values()) == total
    assert len(tap.messages) == total  # no duplicate from the producer's retries
    assert_exactly_once(stats, tap.messages)


def test_health_and_metrics_report_the_figures(stack):
    sim, ing, sim_url, health_url = start_pair(stack, steps=200, rate=400, CRYPTOMON_WS_STALE_AFTER="2")
    with sim as sim_proc, ing:
        stats = wait_json(f"{sim_url}/sim/stats", lambda b: b["done"], 60, "simulator to finish")
        totals = sim_totals(stats)
        body = wait_json(
            f"{health_url}/health",
            lambda b: sum(b["messages_delivered"].values()) == sum(totals.values()),
            30,
            "delivery",
        )
        assert body["status"] == "ok" and body["connected"] is True
        for kind in KINDS:
            assert body["messages_produced"][kind] == sum(v for (s, k), v in totals.items() if k == kind)
        metrics = httpx.get(f"{health_url}/metrics", timeout=5).text
        produced = float(body["messages_produced"]["trade"])
        assert f'cryptomon_ingest_messages_produced_total{{stream="trade"}} {produced}' in metrics
        assert "cryptomon_ingest_connected 1.0" in metrics
        # the exchange goes away: /health answers 503 and says why
        sim_proc.stop()
        wait_for(lambda: get_json(f"{health_url}/health")[0] == 503, 20, what="/health to turn 503")
        status, body = get_json(f"{health_url}/health")
        assert status == 503 and body["status"] == "unhealthy" and body["connected"] is False


def test_connection_rotation_hands_over_without_a_gap(stack):
    """Binance cuts connections at 24 h; ingestion replaces them early (here every 2 s) with an
    overlapping connection: no trade needs a backfill and not one bookTicker update is lost."""
    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    sim, ing, sim_url, health_url = start_pair(stack, steps=1200, rate=200, CRYPTOMON_WS_MAX_AGE="2")
    with sim, ing:
        stats = wait_json(f"{sim_url}/sim/stats", lambda b: b["done"], 60, "simulator to finish")
        total = sum(sim_totals(stats).values())
        health = wait_json(
            f"{health_url}/health", lambda b: sum(b["messages_delivered"].values()) >= total, 30, "delivery"
        )
        tap.read(lambda ms: len(ms) >= total, 30)
        tap.drain(quiet=1.0)
    tap.close()
    assert health["reconnects"] >= 3 and stats["connections"] >= 4
    assert health["events_backfilled"] == 0 and health["gaps_found"] == 0
    assert len(tap.messages) == total
    streams = assert_exactly_once(stats, tap.messages)
    for sym, v in stats["symbols"].items():
        assert len({d["u"] for d in streams[(sym, "bookTicker")]}) == v["generated"]["bookTicker"]
