"""Kafka as users who outgrow one broker run it: three KRaft nodes, every topic with 3 replicas and
min.insync.replicas 2. While the pipeline runs, the three nodes are restarted one at a time; then one node
is killed with kill -9 and its log directory deleted (and the exchange disconnects), and it never comes
back. Each time every event is stored exactly once, and the ingestion and the worker are never restarted."""

from __future__ import annotations

import os
import shutil
import signal
from contextlib import contextmanager

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from cryptomon.kafka.topics import topic_name, topics
from cryptomon.services.local import KafkaBroker, cluster_bootstrap, kafka_nodes, throwaway_stack, under_replicated
from cryptomon.supervisor import sim_args
from tests.helpers import env_for, free_port, get_json, post, running, wait_for, wait_json

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


def test_an_under_replicated_topic_is_reported_then_raised_by_a_reassignment(cluster):
    from confluent_kafka.admin import NewTopic

    from cryptomon.kafka.topics import ensure_topics

    bootstrap = cluster_bootstrap(cluster)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = topic_name("ingest_state")  # as a cluster that grew from one broker would have it
    admin.delete_topics([name])[name].result()
    wait_for(lambda: name not in admin.list_topics(timeout=10).topics, 30, what="the topic deleted")
    wait_for(lambda: _created(admin, NewTopic(name, 1, 1, config={"cleanup.policy": "compact"})), 30, 0.5,
             what="the topic created with one replica")  # fmt: skip
    wait_for(lambda: _replicas_seen_by_each_node(cluster, name) == {1}, 30, 0.2,
             what="every node's metadata showing the new topic")  # fmt: skip
    assert ensure_topics(bootstrap)[name] == "under-replicated: 1 of 3 replicas"  # said, not changed
    assert len(admin.list_topics(timeout=10).topics[name].partitions[0].replicas) == 1
    assert ensure_topics(bootstrap, reassign_with=cluster.deps_dir / "kafka")[name] == "reassigned"
    assert len(admin.list_topics(timeout=10).topics[name].partitions[0].replicas) == 3
    assert ensure_topics(bootstrap)[name] == "ok"
    wait_for(lambda: under_replicated(bootstrap) == [], 60, interval=0.5, what="the new replicas in sync")


def _replicas_seen_by_each_node(cluster, name: str) -> set[int]:
    """Replica counts of the topic's partition 0 as each node's own metadata has it (a node applies the
    metadata log on its own, and one lagging behind still knows the deleted topic, or not the new one)."""
    seen = set()
    for node in kafka_nodes(cluster):
        topic = AdminClient({"bootstrap.servers": node.address}).list_topics(name, timeout=10).topics.get(name)
        seen.add(len(topic.partitions[0].replicas) if topic and topic.partitions else 0)
    return seen


def _created(admin: AdminClient, topic) -> bool:
    try:
        admin.create_topics([topic])[topic.topic].result()
        return True
    except Exception:  # deletion still in progress
        return False


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


class Pipeline:
    """The simulator, `cryptomon ingest` and `cryptomon worker` against the cluster, every client given
    every node's address; `expected()` is what the simulator generated, `stored()` what TimescaleDB holds."""

    def __init__(self, cluster, symbols: tuple[str, ...], steps: int, group: str):
        self.cluster, self.symbols = cluster, symbols
        port, wport, iport = free_port(), free_port(), free_port()
        base = env_for(
            cluster, CRYPTOMON_KAFKA_BOOTSTRAP=cluster_bootstrap(cluster), CRYPTOMON_SYMBOLS=",".join(symbols)
        )
        self.ingest_env = {
            **base,
            "CRYPTOMON_BINANCE_WS_URL": f"ws://127.0.0.1:{port}/stream",
            "CRYPTOMON_BINANCE_REST_URL": f"http://127.0.0.1:{port}",
            "CRYPTOMON_INGEST_HEALTH_PORT": str(iport),
        }
        self.worker_env = {**base, "CRYPTOMON_WORKER_HEALTH_PORT": str(wport), "CRYPTOMON_WORKER_GROUP": group}
        self.sim_args = sim_args(port, "--rate", "100", "--max-steps", str(steps))
        self.sim_url, self.ingest_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{iport}"
        self.worker_url = f"http://127.0.0.1:{wport}"

    @contextmanager
    def running(self, name: str):
        """The three processes, started and stopped together; yields (ingest, worker)."""
        with (
            running(f"{name}-sim", self.sim_args, self.ingest_env),
            running(f"{name}-ingest", ["ingest"], self.ingest_env) as ingest,
            running(f"{name}-worker", ["worker"], self.worker_env) as worker,
        ):
            yield ingest, worker

    def finish(self) -> tuple[dict, dict]:
        """Wait for the simulator to end and the ingestion to deliver everything; returns what TimescaleDB
        must hold per (symbol, kind) and the ingestion's /health."""
        stats = wait_json(f"{self.sim_url}/sim/stats", lambda b: b["done"], 240, "the simulator to finish")
        health = wait_json(
            f"{self.ingest_url}/health",
            lambda b: b["gaps_open"] == 0 and sum(b["messages_delivered"].values()) >= sum(b["messages_produced"].values()),
            180,
            "every event delivered and every gap filled",
        )  # fmt: skip
        want = {}
        for sym, v in stats["symbols"].items():
            for kind, span in (("trade", v["trade_ids"]), ("aggTrade", v["agg_ids"])):
                n = span[1] - span[0] + 1
                want[(sym, kind)] = (n, n, span[0])
        return want, health

    def wait_stored(self, want: dict, books: int) -> None:
        def stored() -> bool:
            got = counts(self.cluster.pg_dsn, self.symbols)
            trades = {k: v for k, v in got.items() if k[1] != "bookTicker"}
            book_rows = [v for k, v in got.items() if k[1] == "bookTicker"]
            return trades == want and sum(v[0] for v in book_rows) == books == sum(v[1] for v in book_rows)

        wait_for(stored, 180, interval=0.5, what="every event in TimescaleDB exactly once")


def test_a_rolling_restart_of_all_three_nodes_loses_no_event(cluster):
    """Each node stopped (a controlled shutdown) and started again while the pipeline runs, the next one only
    once every partition is in sync again, as an operator upgrading the cluster would."""
    pipe = Pipeline(cluster, ("BNBUSDT",), 3000, "cluster-rolling")
    with pipe.running("rolling") as (ingest, worker):
        pids = (ingest.popen.pid, worker.popen.pid)
        wait_json(f"{pipe.ingest_url}/health", lambda b: sum(b["messages_delivered"].values()) > 500, 90, "events")
        for n in (1, 2, 3):
            node = KafkaBroker(cluster, n)
            node.stop()  # SIGTERM: Kafka moves the node's leaderships away before it goes
            node.start()
            wait_for(lambda: under_replicated(cluster_bootstrap(cluster)) == [], 120, interval=1.0,
                     what=f"{node.name}'s partitions back in sync")  # fmt: skip
        want, health = pipe.finish()
        pipe.wait_stored(want, health["messages_produced"]["bookTicker"])
        assert (ingest.popen.pid, worker.popen.pid) == pids and ingest.alive() and worker.alive()
        assert health["ids_unfillable"] == 0 and health["task_restarts"] == 0
    assert "Traceback" not in ingest.log() and "Traceback" not in worker.log()


def test_a_node_lost_for_good_with_its_disk_loses_no_event(cluster):
    pipe = Pipeline(cluster, ("BTCUSDT", "ETHUSDT"), 4000, "cluster-loss")
    lost = KafkaBroker(cluster, 1)  # the first bootstrap address too: clients must find the others
    with pipe.running("cluster") as (ingest, worker):
        pids = (ingest.popen.pid, worker.popen.pid)
        wait_json(f"{pipe.ingest_url}/health", lambda b: sum(b["messages_delivered"].values()) > 2000, 90, "events")
        os.kill(lost.pid(), signal.SIGKILL)
        shutil.rmtree(lost.data_dir)  # its disk is gone too: what only it had is lost
        post(f"{pipe.sim_url}/sim/drop")  # and the exchange disconnects meanwhile
        # /health says what the producer sees: the cluster without the lost node, every partition with a leader
        # (how many nodes it is connected to says less: it connects only to the leaders it writes to)
        seen = wait_json(f"{pipe.ingest_url}/health",
                         lambda b: b["kafka"]["nodes"] == [2, 3] and not b["kafka"]["partitions_without_leader"],
                         90, "the producer to see the cluster without the lost node")  # fmt: skip
        want, health = pipe.finish()
        pipe.wait_stored(want, health["messages_produced"]["bookTicker"])  # a disconnect loses bookTickers
        assert ingest.alive() and worker.alive()
        assert (ingest.popen.pid, worker.popen.pid) == pids  # never restarted
        assert health["ids_unfillable"] == 0 and health["task_restarts"] == 0
        assert seen["kafka"]["seconds_since_last_ack"] is not None
        worker_sees = get_json(f"{pipe.worker_url}/health")[1]["kafka"]
        assert worker_sees["partitions_without_leader"] == [] and worker_sees["nodes"] == [2, 3]
    assert "Traceback" not in ingest.log() and "Traceback" not in worker.log()
    assert lost.pid() is None  # and it stayed dead
    md = AdminClient({"bootstrap.servers": cluster_bootstrap(cluster)}).list_topics(timeout=10)
    assert topic_name("trades") in md.topics and len(md.brokers) == 2
