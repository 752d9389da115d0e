"""Kafka topic definitions (parsed from topics.conf, the one place they live) and their creation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptomon.errors import ConfigError
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


def ensure_topics(bootstrap: str, timeout: float = 30.0, security: dict | None = None) -> dict[str, str]:
    """Create the missing topics, grow partition counts and apply configs. Idempotent.

    Returns {topic: "created" | "updated" | "ok"}.
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
    existing = admin.list_topics(timeout=timeout).topics
    result: dict[str, str] = {}
    to_create = [s for s in topics().values() if s.name not in existing]
    if to_create:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, 1, config=s.config) for s in to_create], request_timeout=timeout
        )
        for name, fut in futures.items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:  # created meanwhile by another process: fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                result[name] = "ok"
    for spec in topics().values():
        if spec.name in result:
            continue
        status = "ok"
        have = len(existing[spec.name].partitions)
        if have < spec.partitions:
            admin.create_partitions([NewPartitions(spec.name, spec.partitions)])[spec.name].result()
            status = "updated"
        elif have > spec.partitions:
            log.warning(
                "topic %s has %d partitions, %d declared: Kafka cannot shrink it", spec.name, have, spec.partitions
            )
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in spec.config.items()
            ],
        )
        for fut in admin.incremental_alter_configs([resource]).values():
            fut.result()
        result[spec.name] = status
    return result
