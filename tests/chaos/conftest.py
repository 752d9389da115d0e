"""The chaos suite kills and restarts Kafka and TimescaleDB, so it runs on a stack of its own (ports
19192/19193 and 15533 unless CRYPTOMON_CHAOS_KAFKA_PORT / CRYPTOMON_CHAOS_PG_PORT say otherwise),
started once for the module and stopped at the end; the session stack of the integration tests is
never touched."""

from __future__ import annotations

import os

import pytest

from cryptomon.settings import Settings


@pytest.fixture(scope="module")
def chaos_stack() -> Settings:
    from cryptomon.services.local import throwaway_stack

    kafka_port = int(os.environ.get("CRYPTOMON_CHAOS_KAFKA_PORT", "19192"))
    pg_port = int(os.environ.get("CRYPTOMON_CHAOS_PG_PORT", "15533"))
    with throwaway_stack(kafka_port, pg_port, prefix="cryptomon-chaos-") as settings:
        yield settings
