import pytest

from cryptomon.db.migrate import discover
from cryptomon.errors import ConfigError
from cryptomon.kafka.topics import parse_topics, topics


def test_declared_topics_follow_the_spec_sized_for_the_whole_market():
    t = topics()
    assert t["trades"].name == "binance.trades" and t["trades"].partitions == 6
    assert t["book_ticker"].name == "binance.book_ticker" and t["book_ticker"].partitions == 6
    for role in ("trades", "book_ticker"):
        assert t[role].config["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert t["deadletter"].name == "binance.deadletter"


def test_parse_topics_rejects_bad_lines():
    assert parse_topics("# only a comment\n\n") == {}
    with pytest.raises(ConfigError, match="line 2"):
        parse_topics("a t 1\nb t2 zero\n")
    with pytest.raises(ConfigError, match="bad config"):
        parse_topics("a t 1 retention.ms\n")
    with pytest.raises(ConfigError, match="defined twice"):
        parse_topics("a t 1\na u 1\n")


def test_migrations_are_numbered_and_record_themselves():
    found = discover()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    for m in found:
        text = m.path.read_text()
        assert f"VALUES ({m.version}, '{m.name}')" in text, f"{m.path.name} must record itself"


def test_kafka_cluster_ids_never_start_with_a_dash():
    from unittest import mock

    from cryptomon.services import local

    ids = [local.new_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    # the case that broke `kafka-storage format`: a UUID whose base64 starts with '-' is drawn again
    dash_first = local.uuid.UUID(bytes=b"\xf8" + bytes(15))
    with mock.patch.object(local.uuid, "uuid4", side_effect=[dash_first, local.uuid.UUID(int=1)]):
        assert local.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAQ"


def test_replication_follows_the_cluster_as_kafka_asks():
    from cryptomon.kafka.topics import replication_plan

    assert replication_plan(1) == (1, 1)
    assert replication_plan(2) == (2, 1)
    assert replication_plan(3) == (3, 2)  # one node may fail with no acknowledged write lost
    assert replication_plan(5) == (3, 2)
    assert replication_plan(5, factor=5, min_insync=3) == (5, 3)
    with pytest.raises(ConfigError, match="needs at least 3 brokers"):
        replication_plan(2, factor=3)
    with pytest.raises(ConfigError, match=r"min\.insync\.replicas"):
        replication_plan(3, min_insync=4)


def test_a_node_of_a_three_node_cluster_knows_all_voters_and_has_ports_of_its_own(tmp_path):
    from cryptomon.services.local import KafkaBroker, cluster_bootstrap, throwaway_settings

    s = throwaway_settings(tmp_path, 29092, 25433, kafka_nodes=3)
    node = KafkaBroker(s, 2)
    node.dir.mkdir(parents=True)
    node._write_config()
    config = dict(line.split("=", 1) for line in node.config.read_text().splitlines() if "=" in line)
    assert (node.port, node.controller_port, node.name) == (29094, 29095, "kafka-2")
    assert config["node.id"] == "2"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097"
    assert config["offsets.topic.replication.factor"] == "3" and config["transaction.state.log.min.isr"] == "2"
    assert cluster_bootstrap(s) == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    assert KafkaBroker(throwaway_settings(tmp_path, 29092, 25433), 1).name == "kafka"  # one node: as before


def test_the_cluster_as_librdkafka_statistics_show_it():
    from cryptomon.kafka.clients import cluster_view

    stats = {
        "brokers": {
            "127.0.0.1:9092/1": {"nodeid": 1, "state": "UP"},
            "127.0.0.1:9094/2": {"nodeid": 2, "state": "DOWN"},
            "127.0.0.1:9096/3": {"nodeid": 3, "state": "UP"},
            "GroupCoordinator": {"nodeid": -1, "state": "UP"},  # a logical broker, not a node
        },
        "topics": {
            "binance.trades": {"partitions": {"0": {"leader": 1}, "1": {"leader": -1}, "-1": {"leader": -1}}},
            "binance.book_ticker": {"partitions": {"0": {"leader": 3}}},
        },
    }
    assert cluster_view(stats) == (["binance.trades/1"], 2, [1, 2, 3])
    assert cluster_view({}) == ([], 0, [])


def test_a_reassignment_plan_adds_the_missing_replicas_spread_over_the_brokers():
    from cryptomon.kafka.reassign import plan

    current = {"t": {0: [1], 1: [2], 2: [3]}, "u": {0: [1, 2, 3]}}
    moves = plan(current, [1, 2, 3], 3)["partitions"]
    assert [m["replicas"][0] for m in moves] == [1, 2, 3]  # each keeps its replica (its leader) first
    assert all(sorted(m["replicas"]) == [1, 2, 3] for m in moves)
    assert {m["topic"] for m in moves} == {"t"}  # nothing to do for a topic that has its replicas
    with pytest.raises(ConfigError, match="needs 3 brokers"):
        plan(current, [1, 2], 3)
