"""The archive horizons as the worker's writers see them: per table, the time before which rows are archived
or about to be (table archive_horizon, published by `cryptomon retention`; why: cryptomon.retention.policy).

Each writer re-reads them at most every REFRESH_SECONDS, well inside the retention's hold (at least 10 s),
so a row older than a horizon is set aside as a dead letter before any chunk below it is dropped.
"""

from __future__ import annotations

import time

import psycopg

REFRESH_SECONDS = 5.0
BEFORE_HORIZON = "before_archive_horizon"  # the dead letters' reason
SQL = "SELECT table_name, (extract(epoch from horizon) * 1000)::bigint FROM archive_horizon"


class Horizons:
    """Epoch-ms horizon per table, read again once REFRESH_SECONDS have passed since the last read."""

    def __init__(self, refresh: float = REFRESH_SECONDS, clock=time.monotonic):
        self.refresh = refresh
        self.clock = clock
        self.read_at: float | None = None
        self.by_table: dict[str, int] = {}

    def get(self, table: str, conn: psycopg.Connection) -> int | None:
        now = self.clock()
        if self.read_at is None or now - self.read_at >= self.refresh:
            try:
                self.by_table = dict(conn.execute(SQL).fetchall())
            except psycopg.errors.UndefinedTable:  # a schema before migration 010: nothing archived yet
                self.by_table = {}
            self.read_at = now
        return self.by_table.get(table)
