"""Kafka as users who outgrow one broker run it: three KRaft nodes, every topic with 3 replicas and
min.insync.replicas 2. One node is killed with kill -9 and its log directory deleted while the pipeline runs
(and the exchange disconnects), and it never comes back: every event is still stored exactly once, and the
ingestion and the worker were never restarted."""

from __future__ import annotations

import os
import shutil
import signal

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from cryptomon.kafka.topics import topic_name, topics
from cryptomon.services.local import KafkaBroker, cluster_bootstrap, throwaway_stack, under_replicated
from cryptomon.supervisor import sim_args
from tests.helpers import env_for, free_port, post, running, wait_for, wait_json

pytestmark = pytest.mark.integration
KAFKA_PORT, PG_PORT = 19492, 15833  # a stack of its own: nodes on 19492/3, 19494/5, 19496/7


@pytest.fixture(scope="module")
def cluster():
    with throwaway_stack(KAFKA_PORT, PG_PORT, prefix="cryptomon-cluster-", kafka_nodes=3) as settings:
        yield settings


def test_topics_are_replicated_three_times_with_two_in_sync(cluster):
    admin = AdminClient({"bootstrap.servers": cluster_bootstrap(cluster)})
    md = admin.list_topics(timeout=10)
    assert len(md.brokers) == 3
    for spec in topics().values():
        assert {len(p.replicas) for p in md.topics[spec.name].partitions.values()} == {3}, spec.name
    resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in topics().values()]
    for future in admin.describe_configs(resources).values():
        assert future.result()["min.insync.replicas"].value == "2"
    assert under_replicated(cluster_bootstrap(cluster)) == []


def counts(dsn: str, symbols: tuple[str, ...]) -> dict[tuple[str, str], tuple[int, int, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT symbol, event_type, count(*), count(DISTINCT trade_id), min(trade_id) FROM trades "
            "WHERE symbol = ANY(%s) GROUP BY 1, 2",
            (list(symbols),),
        ).fetchall()
        books = conn.execute(
            "SELECT symbol, 'bookTicker', count(*), count(DISTINCT update_id), 0 FROM book_ticker "
            "WHERE symbol = ANY(%s) GROUP BY 1",
            (list(symbols),),
        ).fetchall()
    return {(s, k): (n, distinct, low) for s, k, n, distinct, low in rows + books}


def test_a_node_lost_for_good_with_its_disk_loses_no_event(cluster):
    symbols = ("BTCUSDT", "ETHUSDT")
    port, wport, iport = free_port(), free_port(), free_port()
    base = env_for(cluster, CRYPTOMON_KAFKA_BOOTSTRAP=cluster_bootstrap(cluster), CRYPTOMON_SYMBOLS=",".join(symbols))
    ingest_env = {
        **base,
        "CRYPTOMON_BINANCE_WS_URL": f"ws://127.0.0.1:{port}/stream",
        "CRYPTOMON_BINANCE_REST_URL": f"http://127.0.0.1:{port}",
        "CRYPTOMON_INGEST_HEALTH_PORT": str(iport),
    }
    worker_env = {**base, "CRYPTOMON_WORKER_HEALTH_PORT": str(wport), "CRYPTOMON_WORKER_GROUP": "cluster-test"}
    lost = KafkaBroker(cluster, 1)  # the first bootstrap address too: clients must find the others
    with (
        running("cluster-sim", sim_args(port, "--rate", "100", "--max-steps", "4000"), ingest_env),
        running("cluster-ingest", ["ingest"], ingest_env) as ingest,
        running("cluster-worker", ["worker"], worker_env) as worker,
    ):
        pids = (ingest.popen.pid, worker.popen.pid)
        sim_url, ingest_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{iport}"
        wait_json(f"{ingest_url}/health", lambda b: sum(b["messages_delivered"].values()) > 2000, 90, "first events")
        os.kill(lost.pid(), signal.SIGKILL)
        shutil.rmtree(lost.data_dir)  # its disk is gone too: what only it had is lost
        post(f"{sim_url}/sim/drop")  # and the exchange disconnects meanwhile
        stats = wait_json(f"{sim_url}/sim/stats", lambda b: b["done"], 180, "the simulator to finish")
        health = wait_json(
            f"{ingest_url}/health",
            lambda b: b["gaps_open"] == 0 and sum(b["messages_delivered"].values()) >= sum(b["messages_produced"].values()),
            180,
            "every event delivered and every gap filled",
        )  # fmt: skip
        want = {}
        for sym, v in stats["symbols"].items():
            for kind, span in (("trade", v["trade_ids"]), ("aggTrade", v["agg_ids"])):
                n = span[1] - span[0] + 1
                want[(sym, kind)] = (n, n, span[0])
        books = health["messages_produced"]["bookTicker"]  # a disconnect loses bookTickers at the exchange
        wait_for(
            lambda: (
                {k: v for k, v in counts(cluster.pg_dsn, symbols).items() if k[1] != "bookTicker"} == want
                and sum(v[0] for k, v in counts(cluster.pg_dsn, symbols).items() if k[1] == "bookTicker") == books
            ),
            180,
            what="every event in TimescaleDB",
        )
        got = counts(cluster.pg_dsn, symbols)
        assert sum(v[0] for k, v in got.items() if k[1] == "bookTicker") == sum(
            v[1] for k, v in got.items() if k[1] == "bookTicker"
        )  # no bookTicker twice
        assert ingest.alive() and worker.alive()
        assert (ingest.popen.pid, worker.popen.pid) == pids  # never restarted
        assert health["ids_unfillable"] == 0 and health["task_restarts"] == 0
    assert "Traceback" not in ingest.log() and "Traceback" not in worker.log()
    assert lost.pid() is None  # and it stayed dead
    assert topic_name("trades") in {t for t in AdminClient({"bootstrap.servers": cluster_bootstrap(cluster)})
                                    .list_topics(timeout=10).topics}  # fmt: skip
