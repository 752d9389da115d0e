"""Which chunks go, and when (pure).

A chunk is dropped whole, and only when no writer can add to it any more:
1. Its whole range is older than the table's age: its end is at or before now - age.
2. The table's *horizon* (the end of the newest such chunk) was published at least `hold` seconds ago.
   The worker re-reads the horizons every few seconds and sets a row older than its table's horizon aside
   as a dead letter (`before_archive_horizon`) instead of inserting it; the streaming job does the same for
   the metric windows, checked in the transaction that writes them (db/horizons.py). So after `hold`
   no new row reaches the chunk: the archive is complete, and a dropped range is never re-created by a late
   or replayed row.
A horizon only moves forward, and a newer one is published only once every chunk below the current one
is gone: publishing restarts the hold, so chunks held back (by an archive that failed) would otherwise wait
for ever when chunks are shorter than the hold. No reader of the raw rows holds a drop back: the streaming
job's metrics come from Kafka, merged batch by batch (spark/merge.py), never from the raw tables.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from psycopg import sql


class Chunk(NamedTuple):
    schema: str
    name: str
    start: datetime
    end: datetime

    @property
    def qualified(self) -> str:
        """schema.name, quoted, as a regclass parameter."""
        return f'"{self.schema}"."{self.name}"'

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


class Horizon(NamedTuple):
    at: datetime  # rows before this are archived or about to be
    published_at: datetime


def cutoff(now: datetime, age_seconds: int) -> datetime | None:
    """The time before which rows are too old; None when the table is kept for ever (age 0)."""
    return now - timedelta(seconds=age_seconds) if age_seconds > 0 else None


def next_horizon(chunks: list[Chunk], cut: datetime | None, published: Horizon | None) -> datetime | None:
    """The horizon to publish now: the end of the newest chunk wholly before `cut`, if later than the one
    published (a horizon only moves forward); else None."""
    if cut is None:
        return None
    ends = [c.end for c in chunks if c.end <= cut]
    if not ends:
        return None
    newest = max(ends)
    return newest if published is None or newest > published.at else None


def droppable(chunks: list[Chunk], published: Horizon | None, now: datetime, hold: timedelta) -> list[Chunk]:
    """The chunks wholly below the published horizon, once it has stood for `hold`; oldest first."""
    if published is None or now - published.published_at < hold:
        return []
    return sorted((c for c in chunks if c.end <= published.at), key=lambda c: c.start)
