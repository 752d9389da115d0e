"""Kafka topic definitions (parsed from topics.conf, the one place they live) and their creation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptomon.errors import ConfigError, Unavailable
from cryptomon.paths import TOPICS_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic of topics.conf: role, name, partitions and configs."""

    role: str
    name: str
    partitions: int
    config: dict[str, str]


def parse_topics(text: str) -> dict[str, TopicSpec]:
    """Parse topics.conf; returns specs by role. Raises ValueError naming the bad line."""
    topics: dict[str, TopicSpec] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
            raise ConfigError(f"topics.conf line {lineno}: expected 'role name partitions [k=v ...]': {raw!r}")
        config = {}
        for item in fields[3:]:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise ConfigError(f"topics.conf line {lineno}: bad config {item!r}")
            config[key] = value
        role, name = fields[0], fields[1]
        if role in topics:
            raise ConfigError(f"topics.conf line {lineno}: role {role!r} defined twice")
        topics[role] = TopicSpec(role, name, int(fields[2]), config)
    return topics


@lru_cache(maxsize=1)
def topics(path: Path = TOPICS_FILE) -> dict[str, TopicSpec]:
    return parse_topics(path.read_text())


def topic_name(role: str) -> str:
    return topics()[role].name


# the market's topics, whose retention CRYPTOMON_KAFKA_RETENTION may set (the others keep topics.conf's)
MARKET_ROLES = ("trades", "book_ticker", "depth")
MAX_REPLICATION = 3  # what Kafka's production guides ask for: acks=all then survives a lost node


def replication_plan(brokers: int, factor: int = 0, min_insync: int = 0) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of `brokers`: min(3, brokers) copies, and 2
    of them in sync for an acknowledged write when there are 3 (1 otherwise), unless set (0: automatic).
    With 3 and 2, no write acknowledged to an acks=all producer is lost while one node fails."""
    rf = factor or min(MAX_REPLICATION, brokers)
    isr = min_insync or (2 if rf >= 3 else 1)
    if not 1 <= rf <= brokers:
        raise ConfigError(f"replication factor {rf} needs at least {rf} brokers; the cluster has {brokers}")
    if not 1 <= isr <= rf:
        raise ConfigError(f"min.insync.replicas {isr} must be between 1 and the replication factor {rf}")
    return rf, isr


def ensure_topics(
    bootstrap: str,
    timeout: float = 30.0,
    security: dict | None = None,
    replication_factor: int = 0,
    min_insync_replicas: int = 0,
    reassign_with: Path | None = None,
    market_retention_seconds: int = 0,
) -> dict[str, str]:
    """Create the missing topics (replicated as replication_plan() says), grow partition counts and apply
    configs (the market topics' retention.ms from `market_retention_seconds` when set). Idempotent. A topic with fewer replicas than the plan is reported (`under-replicated`), never
    changed silently; with `reassign_with` (Kafka's jars: `cryptomon topics ensure --reassign`) its
    replication is raised by a partition reassignment (kafka/reassign.py) and it reads `reassigned`.

    Returns {topic: "created" | "updated" | "ok" | "under-replicated: N of M replicas"}.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap, **(security or {})})
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics
    rf, isr = replication_plan(len(metadata.brokers), replication_factor, min_insync_replicas)
    configs = {name: {**spec.config, "min.insync.replicas": str(isr)} for name, spec in
               ((s.name, s) for s in topics().values())}  # fmt: skip
    for role in MARKET_ROLES if market_retention_seconds else ():  # CRYPTOMON_KAFKA_RETENTION
        configs[topic_name(role)]["retention.ms"] = str(market_retention_seconds * 1000)
    result: dict[str, str] = {}
    to_create = [s for s in topics().values() if s.name not in existing]
    if to_create:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, rf, config=configs[s.name]) for s in to_create], request_timeout=timeout
        )
        raced = []
        for name, fut in futures.items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:  # created meanwhile, or the answering broker's metadata lagged
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                raced.append(name)
        if raced:  # checked like any existing topic, once the metadata shows it
            existing = {**existing, **_described(admin, raced, timeout)}
    for spec in topics().values():
        if spec.name in result:
            continue
        status = "ok"
        replicas = min(len(p.replicas) for p in existing[spec.name].partitions.values())
        if replicas < rf and reassign_with is not None:
            from cryptomon.kafka.reassign import plan, reassign

            current = {spec.name: {p.id: list(p.replicas) for p in existing[spec.name].partitions.values()}}
            reassign(bootstrap, reassign_with, plan(current, list(metadata.brokers), rf))
            log.info("topic %s: replication raised from %d to %d", spec.name, replicas, rf)
            replicas, status = rf, "reassigned"
        elif replicas < rf:
            status = f"under-replicated: {replicas} of {rf} replicas"
            log.warning("topic %s has %d replicas, %d asked for: run `cryptomon topics ensure --reassign`",
                        spec.name, replicas, rf)  # fmt: skip
        have = len(existing[spec.name].partitions)
        if have < spec.partitions:
            admin.create_partitions([NewPartitions(spec.name, spec.partitions)])[spec.name].result()
            status = "updated" if status == "ok" else status
        elif have > spec.partitions:
            log.warning(
                "topic %s has %d partitions, %d declared: Kafka cannot shrink it", spec.name, have, spec.partitions
            )
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in configs[spec.name].items()
                # min.insync.replicas above a topic's replicas would refuse every acks=all write
                if k != "min.insync.replicas" or int(v) <= replicas
            ],
        )
        for fut in admin.incremental_alter_configs([resource]).values():
            fut.result()
        result[spec.name] = status
    return result


def _described(admin, names: list[str], timeout: float) -> dict:
    """Metadata of topics the cluster says exist, asked again until the broker answering knows them all
    (in KRaft each broker applies the metadata log on its own, so one may lag behind the controller)."""
    deadline = time.monotonic() + timeout
    while True:
        found = admin.list_topics(timeout=timeout).topics
        if all(n in found and found[n].partitions for n in names):
            return {n: found[n] for n in names}
        if time.monotonic() > deadline:
            raise Unavailable(f"topics {names} exist but no broker described them within {timeout:.0f} s")
        time.sleep(0.2)
