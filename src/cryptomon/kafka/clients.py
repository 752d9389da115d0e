"""The one place where cryptomon's Kafka consumers are configured."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any


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
