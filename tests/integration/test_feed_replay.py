"""feed record -> feed replay -> ingestion -> Kafka, and Binance CSV dumps replayed with a gap."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.services.local import port_open
from cryptomon.supervisor import replay_args, sim_args
from tests.helpers import TopicTap, decode, env_for, exchange_env, free_port, post, running, wait_for, wait_json

pytestmark = pytest.mark.integration
TOPICS = [topic_name(TRADES), topic_name(BOOK_TICKER)]


def test_record_then_replay_delivers_the_same_events(stack, tmp_path):
    sim_port = free_port()
    env = env_for(stack, CRYPTOMON_BINANCE_WS_URL=f"ws://127.0.0.1:{sim_port}/stream")
    capture = tmp_path / "capture.jsonl"
    with running("sim", sim_args(sim_port, "--rate", "300", "--max-steps", "100"), env):
        wait_for(lambda: port_open("127.0.0.1", sim_port), 20, what="the simulator to listen")
        rec = subprocess.run(
            [sys.executable, "-m", "cryptomon", "feed", "record", str(capture), "--max-messages", "500"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert rec.returncode == 0, rec.stderr
    frames = [orjson.loads(line) for line in capture.read_bytes().splitlines()]
    assert len(frames) == 500 and all("received_at" in f and "@" in f["stream"] for f in frames)

    tap = TopicTap(stack.kafka_bootstrap, TOPICS)
    port = free_port()
    env = exchange_env(stack, port)
    with (
        running("replay", replay_args([capture], port, "--rate", "0"), env),
        running("ingest", ["ingest"], env),
    ):
        wait_json(f"http://127.0.0.1:{port}/sim/stats", lambda b: b["done"], 90, "replay to finish")
        tap.read(lambda ms: len(ms) >= 500, 30)
        tap.drain(quiet=1.0)
    tap.close()
    got = [decode(m) for m in tap.messages]
    assert len(got) == 500
    for g in got:
        g.pop("ingestion_timestamp")
    assert sorted(map(orjson.dumps, got)) == sorted(orjson.dumps(f["data"]) for f in frames)


def test_binance_csv_dump_replay_with_a_drop_is_backfilled(stack, tmp_path):
    trades = tmp_path / "BTCUSDT-trades-2025-01-02.csv"
    aggs = tmp_path / "BTCUSDT-aggTrades-2025-01-02.csv"
    t0 = 1735776000000000  # microseconds, as in Binance's 2025+ spot dumps
    n = 3000
    trades.write_text(
        "\n".join(
            f"{100 + i},97000.{i % 100:02d},0.001,97.0,{t0 + i * 1000},{'true' if i % 2 else 'false'},true"
            for i in range(n)
        )
        + "\n"
    )
    aggs.write_text(
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match\n"
        + "\n".join(
            f"{7 + i},97000.{i % 100:02d},0.001,{100 + i},{100 + i},{t0 + i * 1000},false,true" for i in range(n)
        )
        + "\n"
    )
    for path, field in ((trades, "t"), (aggs, "a")):
        tap = TopicTap(stack.kafka_bootstrap, TOPICS)
        port = free_port()
        env = exchange_env(stack, port, CRYPTOMON_SYMBOLS="BTCUSDT", CRYPTOMON_BACKOFF_INITIAL="0.2")
        with (
            running("replay", replay_args([path], port, "--rate", "1500"), env),
            running("ingest", ["ingest"], env),
        ):
            wait_json(
                f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}/health",
                lambda b: sum(b["messages_produced"].values()) > 500,
                30,
                "first events",
            )
            post(f"http://127.0.0.1:{port}/sim/drop")
            wait_json(f"http://127.0.0.1:{port}/sim/stats", lambda b: b["done"], 60, "replay to finish")
            h = wait_json(
                f"http://127.0.0.1:{env['CRYPTOMON_INGEST_HEALTH_PORT']}/health",
                lambda b: b["ids_pending_backfill"] == 0 and sum(b["messages_delivered"].values()) >= n,
                60,
                "backfill",
            )
            tap.read(lambda ms: len(ms) >= n, 30)
            tap.drain(quiet=1.0)
        tap.close()
        got = [decode(m) for m in tap.messages]
        ids = sorted(g[field] for g in got)
        first = 100 if field == "t" else 7
        assert ids == list(range(first, first + n)), path.name
        assert h["events_backfilled"] > 0 and h["ids_unfillable"] == 0
        by_id = {g[field]: g for g in got}
        assert by_id[first + 1]["T"] == (t0 + 1000) // 1000  # microseconds -> ms
        assert by_id[first + 1]["p"] == "97000.01"
