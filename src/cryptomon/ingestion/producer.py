"""The ingestion's Kafka producer: idempotent, acks=all, lz4, batched; nothing dropped silently."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import cast

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka._types import HeadersType

from cryptomon.kafka.clients import ClusterView, cluster_view
from cryptomon.latency import LatencyHistogram

log = logging.getLogger(__name__)

# errors after which re-sending the same bytes cannot succeed: such a message goes to the dead letters
REFUSED_HEAD = 64 * 1024  # how much of a refused message its dead letter keeps
_FATAL_FOR_MESSAGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError._INVALID_ARG}


def producer_config(bootstrap: str, linger_ms: int = 20, buffer_mb: int = 128) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # implies acks=all, retries, in-order per partition
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": linger_ms,
        "batch.num.messages": 1000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": buffer_mb * 1024,  # CRYPTOMON_PRODUCER_BUFFER_MB: the RSS it may take
        # librdkafka retries by itself until this timeout; past it the callback re-sends (counted)
        "message.timeout.ms": 120_000,
        # the Java client's key hashing, so Spark and other clients agree on key -> partition
        "partitioner": "murmur2_random",
        "client.id": "cryptomon-ingestion",
        "statistics.interval.ms": 5000,  # partitions without a leader, brokers up: for /health
    }


class KafkaSink:
    """The idempotent, acks=all producer: every delivery checked, a failed one sent again, none dropped."""

    def __init__(
        self,
        bootstrap: str,
        linger_ms: int = 20,
        deadletter_topic: str | None = None,
        security: dict | None = None,
        buffer_mb: int = 128,
    ):
        self.producer = Producer(
            {**producer_config(bootstrap, linger_ms, buffer_mb), **(security or {}), "error_cb": self._on_error,
             "stats_cb": self._on_stats}
        )  # fmt: skip
        self.cluster = ClusterView([], 0, [])  # as its last statistics report showed it
        self.last_ack_at: float | None = None  # monotonic time of the last acknowledged delivery
        self.latency = LatencyHistogram()  # produce() -> acknowledged (acks=all: every in-sync replica has it)
        self.deadletter_topic = deadletter_topic
        self.delivered: Counter = Counter()  # per topic
        self.produced = 0  # every produce() call, re-sends included
        self.delivery_failures = 0
        self.retried = 0
        self.fatal = 0
        self.last_error: str | None = None
        self.last_error_at = 0.0
        self._since_poll = 0

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        self.last_error_at = time.monotonic()
        log.warning("kafka: %s", err)

    def _on_stats(self, raw: str) -> None:
        self.cluster = cluster_view(orjson.loads(raw))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered[msg.topic()] += 1
            self.last_ack_at = time.monotonic()
            if (seconds := msg.latency()) is not None:
                self.latency.observe(seconds)
            return
        self.delivery_failures += 1
        self.last_error, self.last_error_at = str(err), time.monotonic()
        if err.code() in _FATAL_FOR_MESSAGE and msg.topic() != self.deadletter_topic and self.deadletter_topic:
            self._refused(cast(str, msg.topic()), msg.key(), msg.value(), err)
            return
        self.retried += 1
        log.warning("delivery to %s failed (%s): retrying", msg.topic(), err)
        self.produce(cast(str, msg.topic()), msg.key(), msg.value(), msg.headers())

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: HeadersType | None = None) -> None:
        """Queue a message; when the local queue is full, serve callbacks until there is room
        (backpressure on the caller instead of dropping)."""
        self.produced += 1
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:  # refused at once: too large for Kafka, or not a valid record
                self._refused(topic, key, value, exc.args[0])
                return
        self._since_poll += 1
        if self._since_poll >= 500:
            self._since_poll = 0
            self.producer.poll(0)

    def _refused(self, topic: str, key: bytes | None, value: bytes | None, err: KafkaError) -> None:
        """A message Kafka refuses before queueing it: its start goes to the dead letters (never the whole
        message, which is what was refused), with its size; a refused dead letter is only logged and counted."""
        self.fatal += 1
        self.last_error, self.last_error_at = str(err), time.monotonic()
        size = len(value or b"")
        if topic == self.deadletter_topic or not self.deadletter_topic:
            log.error("kafka refused a dead letter of %d bytes (%s): dropped, counted", size, err)
            return
        log.error("kafka refused a message of %d bytes for %s (%s): its start sent to %s", size, topic, err,
                  self.deadletter_topic)  # fmt: skip
        letter = {"source": "producer", "reason": err.name(), "topic": topic, "raw_bytes": size,
                  "raw": (value or b"")[:REFUSED_HEAD].decode("utf-8", errors="replace")}  # fmt: skip
        self.produce(self.deadletter_topic, b"producer:" + err.name().encode(), orjson.dumps(letter))

    def poll(self, timeout: float = 0.0) -> int:
        return self.producer.poll(timeout)

    def queued(self) -> int:
        return len(self.producer)

    def settled(self, mark: int) -> bool:
        """Have as many messages been delivered (or dead-lettered) as had been produced at `mark`
        (a value of `produced`)? Then everything produced before it is, as far as counts can tell, in Kafka."""
        return sum(self.delivered.values()) + self.fatal >= mark

    def flush(self, timeout: float = 30.0) -> int:
        """Deliver everything queued; returns how many messages are still undelivered."""
        deadline = time.monotonic() + timeout
        while len(self.producer) and time.monotonic() < deadline:
            self.producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        return len(self.producer)
