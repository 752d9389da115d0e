"""Repair of trade windows that received rows after Spark closed them: found by when they were written,
recomputed from the raw rows once Spark's watermark has passed them (why and how: docs/design.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from cryptomon.settings import Settings
from cryptomon.spark import metrics

log = logging.getLogger(__name__)

REPAIR_QUERY = "trade_repair"
WINDOW = timedelta(minutes=1)
OVERLAP = timedelta(seconds=30)  # rows of a transaction still open at the last look are scanned again
SPARK_SILENT = timedelta(minutes=5)  # without Spark's progress for this long, windows are repaired by age


def due(pending: dict[tuple[str, datetime], datetime], watermark: datetime | None, spark_seen: datetime | None,
        now: datetime, grace: timedelta) -> list[tuple[str, datetime]]:  # fmt: skip
    """The pending windows Spark is done with: its watermark has passed their end. If Spark has not
    reported for SPARK_SILENT, those older than `grace` after their end (pure)."""
    silent = spark_seen is None or now - spark_seen > SPARK_SILENT
    out = []
    for symbol, start in pending:
        end = start + WINDOW
        if (watermark is not None and watermark >= end) or (silent and now >= end + grace):
            out.append((symbol, start))
    return sorted(out)


def note_found(pending: dict[tuple[str, datetime], datetime], found, requested, cursor: datetime) -> None:
    """Add the windows a round found (symbol, start, first flagged row's write time) and those Spark asked
    for to `pending`, each with its position: where a restart must look again to find it. Never before the
    cursor: the scan looks OVERLAP back, so rows there are found again every round, and with the cursor as
    their position, windows of the current minute found that way held the cursor where it was, for good
    (the scan then grew by every round, for as long as trades kept coming) (pure)."""
    for symbol, start, first_written in found:
        pending.setdefault((symbol, start), max(cursor, first_written))
    for key in requested:
        pending.setdefault(key, cursor)


def scanned_until(pending: dict[tuple[str, datetime], datetime], due: list, now: datetime) -> datetime:
    """How far the loop has looked for good: a restart looks again from the oldest window still waiting (pure)."""
    done = set(due)
    return min([now, *(v for k, v in pending.items() if k not in done)])


class Repairer:
    """`in_transaction(work)` runs work(conn) in one transaction, retrying while the database is down (the
    streaming job's MetricsWriter.in_transaction, which also serialises it with the micro-batch writes)."""

    def __init__(self, settings: Settings, in_transaction, trades_query: str, interval: float = 10.0):
        self.settings = settings
        self.in_transaction = in_transaction
        self.trades_query = trades_query
        self.interval = interval
        self.late = timedelta(seconds=settings.spark_watermark_seconds / 2)
        self.grace = timedelta(seconds=settings.spark_watermark_seconds + 3 * settings.spark_trigger_seconds)
        self.pending: dict[tuple[str, datetime], datetime] = {}  # window -> scan position it was found at
        self._requested: set[tuple[str, datetime]] = set()
        self._lock = threading.Lock()
        self.run_id = uuid.uuid4().hex
        self.rounds = 0
        self.repaired = 0
        self.first_look: datetime | None = None
        self.stopping = threading.Event()

    def request(self, symbol: str, window_start: datetime) -> None:
        """A window to compute from the raw rows (its Spark sums overflowed)."""
        if window_start.tzinfo is None:  # Spark hands out naive datetimes in the session's zone, UTC
            window_start = window_start.replace(tzinfo=UTC)
        with self._lock:
            self._requested.add((symbol, window_start))

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.round()
            except Exception:  # a failed round is retried by the next; the loop never dies
                log.exception("repair round failed")

    def round(self) -> int:
        """One look at the rows written since the last one; returns how many windows changed."""
        started = time.monotonic()
        result: dict = {}

        def work(conn):
            now = conn.execute("SELECT now()").fetchone()[0]
            row = conn.execute("SELECT scanned_until FROM metric_repair_cursor WHERE name = %s", (REPAIR_QUERY,))
            cursor = (row.fetchone() or (now - timedelta(hours=1),))[0]
            watermark, seen = conn.execute(metrics.TRADE_WATERMARK, (self.trades_query,)).fetchone() or (None, None)
            self.first_look = self.first_look or now
            seen = seen or self.first_look  # a job just started: Spark is not silent before SPARK_SILENT has passed
            params = {"since": cursor - OVERLAP, "until": now, "late": self.late, "watermark": watermark}
            found = conn.execute(metrics.LATE_WINDOWS, params).fetchall()
            with self._lock:
                requested, self._requested = self._requested, set()
            note_found(self.pending, found, requested, cursor)
            windows = due(self.pending, watermark, seen, now, self.grace)
            changed: list = []
            if windows:
                symbols = [w[0] for w in windows]
                changed = conn.execute(
                    metrics.TRADE_REPAIR,
                    (symbols, [w[1] for w in windows], [self.settings.volatility_threshold_for(x) for x in symbols]),
                ).fetchall()
                if changed:
                    conn.execute(metrics.VOLUME_SPIKE_UPDATE, {
                        "k": self.settings.volume_spike_factor, "n": self.settings.volume_spike_windows,
                        "m": min(self.settings.volume_spike_min_windows, self.settings.volume_spike_windows),
                        "symbols": sorted({c[0] for c in changed}), "since": min(c[1] for c in changed),
                    })  # fmt: skip
            until = scanned_until(self.pending, windows, now)
            conn.execute(
                "INSERT INTO metric_repair_cursor (name, scanned_until) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET scanned_until = EXCLUDED.scanned_until",
                (REPAIR_QUERY, until),
            )
            conn.execute(metrics.PROGRESS_COUNTS, {
                "query": REPAIR_QUERY, "batch_id": self.rounds, "run_id": self.run_id, "input_rows": len(found),
                "duration_ms": int((time.monotonic() - started) * 1000), "dead_letters": 0,
                "repaired_windows": len(changed),
            })  # fmt: skip
            result.update(changed=len(changed), due=windows)

        self.in_transaction(work)
        for w in result["due"]:
            self.pending.pop(w, None)
        self.rounds += 1
        n = result.get("changed", 0)
        self.repaired += n
        if n:
            log.info("repaired %d trade windows from the raw rows (%d due, %d waiting for Spark's watermark)", n,
                     len(result["due"]), len(self.pending))  # fmt: skip
        return n
