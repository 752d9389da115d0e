"""The archive horizons as the writers see them: per table, the time before which rows are archived
or about to be (table archive_horizon, published by `cryptomon retention`; why: cryptomon.retention.policy).

The worker re-reads them at most every REFRESH_SECONDS, well inside the retention's hold (at least 10 s),
so a row older than a horizon is set aside as a dead letter before any chunk below it is dropped. The
streaming job reads them with each micro-batch and again in the transaction that writes it (spark/writer.py):
a record older than its raw table's horizon (the worker set its row aside) or in a window older than its
metric table's is a dead letter too, so a metric row never counts a trade the raw rows and the archive do
not hold, and never re-creates a metric chunk already archived.
"""

from __future__ import annotations

import time

import psycopg

REFRESH_SECONDS = 5.0
BEFORE_HORIZON = "before_archive_horizon"  # the dead letters' reason
SQL = "SELECT table_name, (extract(epoch from horizon) * 1000)::bigint FROM archive_horizon"


def read(conn: psycopg.Connection) -> dict[str, int]:
    """Epoch-ms horizon per table, as published now."""
    try:
        return dict(conn.execute(SQL).fetchall())
    except psycopg.errors.UndefinedTable:  # a schema before migration 010: nothing archived yet
        return {}


def cut(horizons: dict[str, int], raw: str, metric: str, window_ms: int) -> int | None:
    """The epoch-ms time before which a record is set aside by a job that writes windows of `window_ms` of
    table `metric` from rows of table `raw` (by the same time column): older than the raw table's horizon,
    or in a window that starts before the metric table's (a window starts before horizon H exactly when the
    record's time is before H rounded up to a window). None: nothing is set aside."""
    times = [horizons[raw]] if raw in horizons else []
    if metric in horizons:
        times.append(-(-horizons[metric] // window_ms) * window_ms)
    return max(times) if times else None


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
            self.by_table = read(conn)
            self.read_at = now
        return self.by_table.get(table)
