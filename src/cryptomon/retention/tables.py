"""The tables retention looks after, and by which column and setting each is aged (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.settings import Settings


@dataclass(frozen=True)
class Retained:
    """A hypertable aged by its time column: chunks older than `setting`'s age are archived, then dropped."""

    table: str
    time_column: str
    setting: str  # the Settings field holding its age in seconds (0: for ever)
    id_column: str | None = None  # an archive is verified against the chunk's smallest and largest id
    sum_column: str | None = None  # ... and against the chunk's exact sum of this decimal column
    written_by_worker: bool = False  # the worker sets rows older than the table's horizon aside

    def age(self, settings: Settings) -> int:
        return int(getattr(settings, self.setting))


RAW = (
    Retained(TRADES, "event_time", "retention_trades", "trade_id", "price", written_by_worker=True),
    Retained(
        BOOK_TICKER, "ingestion_ts", "retention_book_ticker", "update_id", "best_bid_price", written_by_worker=True
    ),
    Retained("order_book_snapshots", "snapshot_time", "retention_order_book", "last_update_id"),
)
METRICS = (
    Retained("trade_metrics", "window_start", "retention_metrics", sum_column="volume"),
    Retained("spread_metrics", "window_start", "retention_metrics", sum_column="max_spread"),
    Retained("book_metrics", "window_start", "retention_metrics", "last_update_id", "spread_sum"),
)
TABLES = RAW + METRICS
BY_NAME = {t.table: t for t in TABLES}

# plain tables pruned by age with a DELETE (small: what goes wrong, and one row per Spark micro-batch)
PRUNED = (
    ("dead_letters", "received_at", "retention_dead_letters"),
    ("stream_progress", "batch_timestamp", "retention_stream_progress"),
)
