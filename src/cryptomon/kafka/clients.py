"""The one place where cryptomon's Kafka consumers are configured."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from cryptomon.errors import Unavailable


def consumer_config(bootstrap: str, group: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A consumer that never commits by itself and starts at the earliest offset of a partition it has no
    committed offset for. Without `group`, a throw-away group of its own (readers that only assign);
    `extra` adds or overrides librdkafka settings."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group or f"cryptomon-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        **(extra or {}),
    }


# a stage's consumer that died without leaving (kill -9, power loss) holds its partitions until its session
# expires: 10 s instead of librdkafka's 45 s, so that a restart resumes sooner
STAGE_CONSUMER = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000, "fetch.wait.max.ms": 50}


def read_to_end(
    bootstrap: str,
    topic: str,
    client_id: str,
    tail: int | None = None,
    timeout: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> tuple[list[Message], set[int]]:
    """Every message of `topic` (or only the last `tail` of each partition) up to the partitions' ends,
    without a consumer group. Returns the messages and the partitions not read to their end within
    `timeout`; an unreachable broker raises KafkaException, a missing topic Unavailable."""
    consumer = Consumer(
        consumer_config(bootstrap, extra={**(security or {}), "enable.partition.eof": True, "client.id": client_id})
    )
    try:
        parts = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if parts.error is not None:
            raise Unavailable(f"topic {topic}: {parts.error}")
        start, pending = [], set()
        for p in parts.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                start.append(TopicPartition(topic, p, low if tail is None else max(low, high - tail)))
                pending.add(p)
        messages: list[Message] = []
        if start:
            consumer.assign(start)
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                for m in consumer.consume(1000, 0.5):
                    err = m.error()
                    if err is None:
                        messages.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
        return messages, pending
    finally:
        consumer.close()


class ClusterView(NamedTuple):
    """The cluster as one client's librdkafka statistics show it."""

    leaderless: list[str]  # partitions (`topic/partition`) it knows without a leader
    up: int  # brokers it is connected to (state UP); with sparse connections only those it needs
    nodes: list[int]  # node ids the cluster's metadata lists: a lost node leaves it once the controller fences it

    def as_dict(self) -> dict[str, Any]:
        """As /health shows it (the ingestion's and the worker's)."""
        return {"partitions_without_leader": self.leaderless, "brokers_up": self.up, "nodes": self.nodes}


def cluster_view(stats: Mapping[str, Any]) -> ClusterView:
    """From a librdkafka statistics report (librdkafka drops a broker the metadata no longer lists)."""
    leaderless = sorted(
        f"{topic}/{pid}"
        for topic, t in stats.get("topics", {}).items()
        for pid, p in t.get("partitions", {}).items()
        if pid != "-1" and p.get("leader", -1) < 0
    )
    nodes = [b for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0]
    up = sum(1 for b in nodes if b.get("state") == "UP")
    return ClusterView(leaderless, up, sorted(b["nodeid"] for b in nodes))
