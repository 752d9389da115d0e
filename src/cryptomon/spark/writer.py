"""The job's sinks: each micro-batch's windows upserted into TimescaleDB in one transaction, the poison
records into dead_letters, Spark's progress into stream_progress; the database waited out when it is down."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime

import psycopg

from cryptomon.backoff import Backoff
from cryptomon.db.errors import DATA_ERRORS
from cryptomon.diskguard import DiskGuard
from cryptomon.errors import Unavailable
from cryptomon.settings import Settings
from cryptomon.spark import metrics
from cryptomon.spark.queries import POISON_QUERY
from cryptomon.spark.repair import Repairer

log = logging.getLogger(__name__)


class MetricsWriter:
    """foreachBatch sinks: the aggregated windows of a micro-batch are few (windows x symbols), so they
    are collected on the driver and upserted in one statement, in one transaction."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # the two queries' batches may run concurrently
        self.db_failures = 0
        self.disk = DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb)
        self.stopping = threading.Event()
        self.data_errors = 0  # micro-batch writes PostgreSQL refused for their data
        self.repair: Repairer | None = None  # gets the windows whose Spark sums overflowed
        self.dead_letters = 0
        self.run_id = uuid.uuid4().hex

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.settings.pg_dsn, autocommit=True, application_name="cryptomon-spark")
        return self._conn

    def in_transaction(self, work, retry: bool = True) -> None:
        """Run `work` in one transaction. While the database is unreachable (down, restarting), the batch
        waits and retries with backoff instead of failing the query: the job stays up, the batch is not
        committed to the checkpoint until its rows are in, and it resumes by itself. Other errors raise:
        Spark fails the batch, and the restarted job replays it from the checkpoint. On a nearly full disk
        under the state folder (PostgreSQL's data, the checkpoints) the batch waits the same way."""
        backoff = Backoff(0.5, self.settings.db_retry_max, reset_after=0)
        with self._lock:
            while True:
                if low := self.disk.check():
                    delay = backoff.next_delay()
                    log.error("%s: holding this micro-batch's write, retrying in %.1fs", low, delay)
                    self.stopping.wait(delay)
                    if self.stopping.is_set():
                        raise Unavailable(f"stopping with a micro-batch unwritten ({low}): replayed on restart")
                    continue
                try:
                    with self._db().transaction():
                        work(self._conn)
                    return
                except DATA_ERRORS as exc:  # the rows themselves: retrying cannot help, the query goes on
                    self.data_errors += 1
                    log.error("PostgreSQL refused this micro-batch's rows (%s): set aside, not retried",
                              str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)  # fmt: skip
                    return
                except psycopg.OperationalError as exc:
                    self._conn = None
                    self.db_failures += 1
                    if not retry or self.stopping.is_set():
                        raise  # at shutdown: the uncommitted batch is replayed by the next start
                    delay = backoff.next_delay()
                    log.warning(
                        "database unavailable (%s): retrying this micro-batch's write in %.1fs",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                        delay,
                    )
                    self.stopping.wait(delay)

    def write_trades(self, batch_df, batch_id: int) -> None:
        rows: list = []
        overflowed: list = []
        for r in batch_df.collect():
            (overflowed if None in (r.sum_pq, r.sum_q, r.sum_p, r.sum_pp) else rows).append(r)
        if overflowed:
            log.warning("%d trade windows overflowed Spark's DECIMAL(38,16) sums: computed from the raw rows "
                        "instead", len(overflowed))  # fmt: skip
            if self.repair is not None:
                for r in overflowed:
                    self.repair.request(r.symbol, r.window_start)
        if not rows:
            return
        data = [
            (
                r.symbol,
                r.window_start,
                r.window_end,
                r.n,
                r.sum_pq,
                r.sum_q,
                r.sum_p,
                r.sum_pp,
                self.settings.volatility_threshold_for(r.symbol),
            )
            for r in rows
        ]
        since = min(r.window_start for r in rows)
        symbols = sorted({r.symbol for r in rows})

        def work(conn):
            conn.execute(metrics.TRADE_UPSERT, metrics.columns(data))
            conn.execute(
                metrics.VOLUME_SPIKE_UPDATE,
                {
                    "k": self.settings.volume_spike_factor,
                    "n": self.settings.volume_spike_windows,
                    "m": min(self.settings.volume_spike_min_windows, self.settings.volume_spike_windows),
                    "symbols": symbols,
                    "since": since,
                },
            )

        self.in_transaction(work)
        log.debug("trade batch %d: %d windows", batch_id, len(rows))

    def write_spreads(self, batch_df, batch_id: int) -> None:
        rows = batch_df.collect()
        if not rows:
            return
        data = [(r.symbol, r.window_start, r.window_end, r.n, r.sum_spread, r.max_spread, r.min_spread) for r in rows]
        self.in_transaction(
            lambda conn: conn.execute(
                metrics.SPREAD_UPSERT, [self.settings.spread_warning_factor, *metrics.columns(data)]
            )
        )
        log.debug("spread batch %d: %d windows", batch_id, len(rows))

    def write_dead_letters(self, batch_df, batch_id: int) -> None:
        rows = batch_df.collect()
        if not rows:
            return
        data = [(r.topic, r.partition, r.offset, r.key, r.value, f"spark: {r.reason}") for r in rows]
        counts = {"query": POISON_QUERY, "batch_id": batch_id, "run_id": self.run_id, "input_rows": len(rows),
                  "duration_ms": 0, "dead_letters": len(rows), "repaired_windows": 0}  # fmt: skip

        def work(conn):
            conn.execute(metrics.DEAD_LETTER_INSERT, metrics.columns(data))
            conn.execute(metrics.PROGRESS_COUNTS, counts)

        self.in_transaction(work)
        self.dead_letters += len(rows)
        for r in rows[:5]:
            log.warning("dead letter %s[%d]@%d: %s | %.200r", r.topic, r.partition, r.offset, r.reason, r.value)
        log.warning("batch %d: %d records the metrics cannot use sent to dead_letters", batch_id, len(rows))

    def record_progress(self, p: dict) -> None:
        dropped = sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", []))
        if dropped:
            log.warning(
                "%s: %d events later than the watermark were dropped in batch %s",
                p.get("name"),
                dropped,
                p.get("batchId"),
            )
        wm = p.get("eventTime", {}).get("watermark")
        row = (
            p.get("name"),
            p.get("batchId"),
            p.get("runId"),
            _ts(p["timestamp"]),
            p.get("numInputRows", 0),
            dropped,
            p.get("batchDuration", 0),
            _ts(wm) if wm else None,
        )
        try:
            self.in_transaction(lambda conn: conn.execute(metrics.PROGRESS_INSERT, row), retry=False)
        except psycopg.Error as exc:  # progress is informative: never fail the job for it
            log.warning("could not record progress: %s", exc)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
