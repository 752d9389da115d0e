"""Shared fixtures. Integration tests run against a REAL local stack (Kafka KRaft + TimescaleDB)
started once per test session on ports of its own, with its state in a fresh temporary folder."""

from __future__ import annotations

import os

import psycopg
import pytest

from cryptomon.settings import Settings

TEST_KAFKA_PORT = int(os.environ.get("CRYPTOMON_TEST_KAFKA_PORT", "19092"))
TEST_PG_PORT = int(os.environ.get("CRYPTOMON_TEST_PG_PORT", "15433"))


@pytest.fixture(scope="session")
def stack() -> Settings:
    from cryptomon.services.local import throwaway_stack

    with throwaway_stack(TEST_KAFKA_PORT, TEST_PG_PORT, prefix="cryptomon-test-stack-") as settings:
        yield settings


@pytest.fixture()
def db(stack: Settings):
    """A connection to the test TimescaleDB with every data table emptied first."""
    with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, book_ticker, trade_metrics, spread_metrics, dead_letters")
        yield conn
