"""The local stack, for real: Kafka (KRaft) and TimescaleDB started by cryptomon itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from cryptomon.db.migrate import discover, migrate
from cryptomon.kafka.clients import consumer_config
from cryptomon.kafka.topics import ensure_topics, topic_name, topics
from cryptomon.names import BOOK_TICKER, DEADLETTER, TRADES
from cryptomon.services.local import throwaway_settings, throwaway_state_dir

pytestmark = pytest.mark.integration
ALL_VERSIONS = [m.version for m in discover()]


def cli(settings, *args, timeout=180):
    env = {
        **os.environ,
        "CRYPTOMON_STATE_DIR": str(settings.state_dir),
        "CRYPTOMON_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CRYPTOMON_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "CRYPTOMON_PG_DSN": settings.pg_dsn,
    }
    return subprocess.run(
        [sys.executable, "-m", "cryptomon", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_services_up_status_down_up_keeps_data():
    """The whole lifecycle through the CLI, on ports and a state folder of its own."""
    state = throwaway_state_dir("cryptomon-test-lifecycle-")
    settings = throwaway_settings(state, 29092, 25433)
    try:
        assert cli(settings, "services", "status").returncode == 3  # nothing runs yet

        up = cli(settings, "services", "up")
        assert up.returncode == 0, up.stderr
        assert "kafka started" in up.stderr and "timescaledb started" in up.stderr
        assert f"applied migrations {ALL_VERSIONS}" in up.stderr

        status = cli(settings, "services", "status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("running") == 2

        again = cli(settings, "services", "up")  # harmless second run
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr and "schema: up to date" in again.stderr

        # leave a row and a message behind, then restart everything
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO book_ticker VALUES (now(), 'BTCUSDT', 42, 1, 1, 2, 2)")
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
        producer.produce(topic_name(TRADES), key=b"BTCUSDT", value=b"kept")
        assert producer.flush(30) == 0

        down = cli(settings, "services", "down")
        assert down.returncode == 0, down.stderr
        assert "kafka stopped" in down.stderr and "timescaledb stopped" in down.stderr
        assert cli(settings, "services", "status").returncode == 3

        up2 = cli(settings, "services", "up")
        assert up2.returncode == 0, up2.stderr
        with psycopg.connect(settings.pg_dsn) as conn:
            assert conn.execute("SELECT update_id FROM book_ticker").fetchall() == [(42,)]
        consumer = Consumer(consumer_config(settings.kafka_bootstrap))
        consumer.subscribe([topic_name(TRADES)])
        try:
            msg = None
            for _ in range(100):
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    break
            assert msg is not None and msg.value() == b"kept"
        finally:
            consumer.close()
    finally:
        cli(settings, "services", "down")
        shutil.rmtree(state, ignore_errors=True)


def test_topics_have_6_partitions_and_7_day_retention(stack):
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    md = admin.list_topics(timeout=10).topics
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, name) for name in (topic_name(TRADES), topic_name(BOOK_TICKER))
    ]
    for resource, fut in admin.describe_configs(resources).items():
        assert len(md[resource.name].partitions) == 6
        assert fut.result()["retention.ms"].value == "604800000"
    assert topic_name(DEADLETTER) in md
    # idempotent: a second ensure changes nothing
    assert set(ensure_topics(stack.kafka_bootstrap).values()) == {"ok"}


def test_kafka_retention_sets_the_market_topics_and_only_them(stack):
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    names = [topic_name(r) for r in (TRADES, BOOK_TICKER, "depth", DEADLETTER)]

    def retention() -> dict[str, str]:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
        return {r.name: f.result()["retention.ms"].value for r, f in admin.describe_configs(resources).items()}

    try:
        ensure_topics(stack.kafka_bootstrap, market_retention_seconds=12 * 3600)  # CRYPTOMON_KAFKA_RETENTION=12h
        assert retention() == {**dict.fromkeys(names[:3], "43200000"), names[3]: "2592000000"}
    finally:
        ensure_topics(stack.kafka_bootstrap)  # back to topics.conf's, for the other tests
    assert retention() == {**dict.fromkeys(names[:3], "604800000"), names[3]: "2592000000"}


def test_produced_message_is_consumed_back(stack):
    producer = Producer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    delivered = []
    payload = uuid.uuid4().hex.encode()
    producer.produce(
        topic_name(BOOK_TICKER),
        key=b"ETHUSDT",
        value=payload,
        on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())),
    )
    assert producer.flush(30) == 0
    [(err, partition, offset)] = delivered
    assert err is None
    consumer = Consumer(consumer_config(stack.kafka_bootstrap))
    consumer.assign([TopicPartition(topic_name(BOOK_TICKER), partition, offset)])
    try:
        msg = None
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None:
                break
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value()) == (b"ETHUSDT", payload)
    finally:
        consumer.close()


def test_raw_tables_are_hypertables_with_1_day_chunks(db):
    rows = db.execute(
        "SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_name IN ('trades', 'book_ticker') ORDER BY hypertable_name"
    ).fetchall()
    assert [(r[0], r[1], r[2].days) for r in rows] == [("book_ticker", "ingestion_ts", 1), ("trades", "event_time", 1)]
    # a time_bucket query works on them
    assert db.execute("SELECT count(*) FROM (SELECT time_bucket('1 minute', event_time) FROM trades) t").fetchone() == (
        0,
    )


def test_migrations_run_twice_are_a_no_op(stack, db):
    assert migrate(stack.pg_dsn) == []
    assert [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY version")] == ALL_VERSIONS


def test_same_row_twice_leaves_one_with_exact_decimals(db):
    t = datetime(2026, 11, 24, 12, 0, 0, 123000, tzinfo=UTC)
    row = (t, "BTCUSDT", "trade", 7, Decimal("97123.12345678"), Decimal("0.00000001"), True, t)
    for _ in range(2):
        db.execute(
            "INSERT INTO trades (event_time, symbol, event_type, trade_id, price, quantity, is_buyer_maker, ingestion_ts)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            row,
        )
    assert db.execute("SELECT price, quantity FROM trades").fetchall() == [
        (Decimal("97123.12345678"), Decimal("0.00000001"))
    ]
    bt = (t, "BTCUSDT", 1, Decimal("1.5"), Decimal("2"), Decimal("1.6"), Decimal("3"))
    for _ in range(2):
        db.execute("INSERT INTO book_ticker VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", bt)
    assert db.execute("SELECT count(*) FROM book_ticker").fetchone() == (1,)


def test_compose_topic_init_script_creates_the_same_topics(stack, tmp_path):
    """Run deploy/kafka/create-topics.sh (docker compose's kafka-init) against the real broker,
    with Kafka's own TopicCommand/ConfigCommand standing in for the image's bin/ wrappers."""
    from cryptomon.paths import project_root

    root = project_root()
    jars = stack.deps_dir / "kafka"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for script, cls in (
        ("kafka-topics.sh", "org.apache.kafka.tools.TopicCommand"),
        ("kafka-configs.sh", "kafka.admin.ConfigCommand"),
    ):
        (bin_dir / script).write_text(f'#!/bin/sh\nexec java -Xmx128m -cp "{jars}/*" {cls} "$@"\n')
        (bin_dir / script).chmod(0o755)
    suffix = uuid.uuid4().hex[:8]
    # the real file, with the topic names made unique to this test; first with 1 partition each (an older
    # deployment), then as it is: the topics grow and get their configs again
    lines = [
        line.replace("binance.", f"compose-{suffix}.")
        for line in (root / "src/cryptomon/kafka/topics.conf").read_text().splitlines()
    ]
    older = tmp_path / "older.conf"
    older.write_text("\n".join(re.sub(r"^(\S+\s+\S+\s+)\d+", r"\g<1>1", line) for line in lines))
    conf = tmp_path / "topics.conf"
    conf.write_text("\n".join(lines))
    for file in (older, conf):
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "TOPICS_FILE": str(file),
            "KAFKA_BIN": str(bin_dir),
        }
        proc = subprocess.run(
            ["bash", str(root / "deploy/kafka/create-topics.sh")], env=env, capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    md = admin.list_topics(timeout=10).topics
    for spec in topics().values():
        name = spec.name.replace("binance.", f"compose-{suffix}.")
        assert len(md[name].partitions) == spec.partitions
        config = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
        values = next(iter(config.values())).result()
        for key, value in spec.config.items():
            assert values[key].value == value, (name, key)
    admin.delete_topics([n for n in md if n.startswith(f"compose-{suffix}.")])
