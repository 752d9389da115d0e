"""Shared fixtures. Integration tests run against a REAL local stack (Kafka KRaft + TimescaleDB)
started once per test session on ports of its own, with its state in a fresh temporary folder."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from cryptomon.settings import Settings, load_settings

TEST_KAFKA_PORT = int(os.environ.get("CRYPTOMON_TEST_KAFKA_PORT", "19092"))
TEST_PG_PORT = int(os.environ.get("CRYPTOMON_TEST_PG_PORT", "15433"))


def make_state_dir(prefix: str) -> Path:
    """A temporary folder the `postgres` user can reach (pytest's own tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def stack_settings_for(state_dir: Path, kafka_port: int, pg_port: int) -> Settings:
    return load_settings(
        state_dir=state_dir,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        kafka_controller_port=kafka_port + 1,
        pg_dsn=f"postgresql://cryptomon:test-only-password@127.0.0.1:{pg_port}/cryptomon",
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; return its value. Fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def stack() -> Settings:
    from cryptomon.services.local import stack_down, stack_up

    state = make_state_dir("cryptomon-test-stack-")
    settings = stack_settings_for(state, TEST_KAFKA_PORT, TEST_PG_PORT)
    try:
        stack_up(settings)
        yield settings
    finally:
        stack_down(settings)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture()
def db(stack: Settings):
    """A connection to the test TimescaleDB with every data table emptied first."""
    with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, book_ticker, trade_metrics, spread_metrics, dead_letters")
        yield conn
