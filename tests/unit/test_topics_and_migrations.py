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
