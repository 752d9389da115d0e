"""The job's sink: each micro-batch's windows merged into TimescaleDB in one transaction with its poison
records (dead_letters) and what it counted; Spark's progress into stream_progress; the database waited out
when it is down."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from datetime import datetime

import psycopg

from cryptomon.backoff import Backoff
from cryptomon.db import horizons
from cryptomon.db.errors import DATA_ERRORS
from cryptomon.diskguard import DiskGuard
from cryptomon.errors import Unavailable
from cryptomon.settings import Settings
from cryptomon.spark import merge, metrics, queries
from cryptomon.spark.pacing import Pacer
from cryptomon.spark.queries import POISON_QUERY

log = logging.getLogger(__name__)

PASSES = ("sums", "runs of ids", "trades on the driver", "merge")  # a micro-batch's passes, timed in its log lines


class HorizonMoved(Exception):
    """An archive horizon moved between a micro-batch's start and its write: the batch is computed again."""


class MetricsWriter:
    """The foreachBatch sink: the aggregated windows of a micro-batch are few (windows x symbols), so they
    are collected on the driver and merged in one statement each, in one transaction."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # the batch's writes and the progress listener's
        self.db_failures = 0
        self.disk = DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb)
        self.stopping = threading.Event()
        self.data_errors = 0  # micro-batch writes PostgreSQL refused for their data
        self.dead_letters = 0
        self.run_id = uuid.uuid4().hex
        self.pacer: Pacer | None = None  # set when the query's trigger is paced by the sink (pacing.py)
        self.paced_ms: dict[int, int] = {}  # per batch id, how long the sink waited after writing

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

    def offsets(self) -> tuple[dict[tuple[str, int], int], queries.Cuts]:
        """Where each partition's counting stands (metric_offsets) and the archive horizons' cuts, waiting
        for the database like a write."""
        got: dict[tuple[str, int], int] = {}
        cuts = [queries.NO_CUTS]

        def work(conn):
            got.update(_offsets(conn))
            cuts[0] = queries.cuts(horizons.read(conn))

        self.in_transaction(work)
        return got, cuts[0]

    def write_batch(self, batch_df, batch_id: int) -> None:
        """One micro-batch of both topics: decoded once, its rejects, its windows' sums and where it ends
        collected, then merged in one transaction with what it counted (offsets, trade ids). Computed again
        in the rare case an archive horizon moved meanwhile (the transaction checks)."""
        began = time.time()
        while True:
            try:
                self._write_batch(batch_df, batch_id)
                break
            except HorizonMoved as moved:
                log.info("batch %d: %s; computed again", batch_id, moved)
        if self.pacer is not None:  # the next batch starts at the pacer's time (pacing.py)
            self.paced_ms[batch_id] = round(self.pacer.wait(began, self.stopping) * 1000)

    def _write_batch(self, batch_df, batch_id: int) -> None:
        start, cuts = self.offsets()
        took = [time.monotonic()]  # when each pass ended: sums, runs, driver's rows, merge
        groups, frame = queries.batch_groups(batch_df, self.settings, start, cuts)
        if not groups:  # no records at all (Spark's first batch may have none), or all counted before
            if batch_df.isEmpty():
                log.debug("batch %d: no records", batch_id)
                return
            log.warning("batch %d: every record was counted before (a replayed batch, or a job started afresh from "
                        "older offsets), skipped; if Kafka was replaced and its offsets started again, clear "
                        "metric_offsets", batch_id)  # fmt: skip
            return
        ends, windows, spreads = merge.split(groups)
        # the rare passes read the batch again: the poison's bytes, the trades of windows Spark cannot sum
        bad = queries.rejects(frame).collect() if any(e.bad for e in ends) else []
        counted = self._counted_ids(windows)
        took.append(time.monotonic())
        known, gaps = merge.runs_from_sums(windows, counted)
        runs = known
        if gaps:  # more than one hole in some window: its runs from a second pass
            runs = {**merge.runs_by_window(queries.trade_runs(frame, gaps).collect()), **known}
        took.append(time.monotonic())
        slow = sorted({w.symbol for w in windows if merge.needs_rows(w, counted, runs)})
        rows = queries.trade_rows(frame, slow).collect() if slow else []
        sums = merge.plan(windows, rows, counted, runs)
        took.append(time.monotonic())
        self.in_transaction(lambda conn: self._merge(conn, batch_id, start, cuts, ends, bad, sums, spreads))
        took.append(time.monotonic())
        parts = ", ".join(
            f"{name} {b - a:.1f} s" for name, (a, b) in zip(PASSES, itertools.pairwise(took), strict=True)
        )
        if known or gaps:
            log.info("batch %d: windows with gaps in their ids, or filling some, take Spark's sums: %d with runs of "
                     "ids from their sums, %d symbols' by a second pass (%s)", batch_id, len(known), len(gaps),
                     parts)  # fmt: skip
        if slow:
            log.info("batch %d: %d symbols' windows summed on the driver (trades counted before, an id twice, or "
                     "Spark's sums overflowed; %s)", batch_id, len(slow), parts)  # fmt: skip
        if took[-1] - took[0] > self.settings.spark_trigger_seconds:
            log.warning("batch %d took %.1f s, longer than the %g s trigger: %s", batch_id, took[-1] - took[0],
                        self.settings.spark_trigger_seconds, parts)  # fmt: skip
        if bad:
            self.dead_letters += len(bad)
            for r in bad[:5]:
                log.warning("dead letter %s[%d]@%d: %s | %.200r", r.topic, r.partition, r.offset, r.reason, r.value)
            log.warning("batch %d: %d records the metrics cannot use sent to dead_letters", batch_id, len(bad))
            if aside := sum(1 for r in bad if r.reason.startswith(horizons.BEFORE_HORIZON)):
                log.warning("batch %d: %d of them older than an archive horizon (%s): their windows or raw rows "
                            "are archived", batch_id, aside, cuts)  # fmt: skip
        log.debug("batch %d: %d trade windows, %d spread windows", batch_id, len(sums), len(spreads))

    def _counted_ids(self, windows: list[merge.TradeWindow]) -> dict[merge.Window, list]:
        """The ids each of the batch's trade windows has counted so far (trade_metrics.counted_ids)."""
        counted: dict[merge.Window, list] = {}

        def work(conn):
            args = (
                [w.symbol for w in windows],
                [w.window_start for w in windows],
                min(w.window_start for w in windows),
            )
            for symbol, window_start, ids in conn.execute(metrics.TRADE_IDS, args):
                counted[(symbol, window_start)] = list(zip(ids[::2], ids[1::2], strict=True))

        if windows:
            self.in_transaction(work)
        return counted

    def _merge(self, conn, batch_id: int, start: dict, cuts: queries.Cuts, ends, bad, sums, spreads) -> None:
        if _offsets(conn, locked=True) != start:  # another job counted in the meantime: this batch is stale
            raise RuntimeError("metric_offsets moved during the micro-batch: is a second streaming job running "
                               "against this database? This job stops; a restart goes on from the offsets")  # fmt: skip
        # read in the transaction that writes: a horizon published after this read drops its chunks only a
        # hold (>= 10 s) later, long after this commit, and the archive's lock waits for it
        if (now := queries.cuts(horizons.read(conn))) != cuts:
            raise HorizonMoved(f"an archive horizon moved during the micro-batch ({cuts} -> {now})")
        if bad:
            conn.execute(metrics.DEAD_LETTER_INSERT, metrics.columns(
                [(r.topic, r.partition, r.offset, r.key, r.value, f"spark: {r.reason}") for r in bad]))  # fmt: skip
            conn.execute(metrics.PROGRESS_COUNTS, {"query": POISON_QUERY, "batch_id": batch_id, "run_id": self.run_id,
                         "input_rows": len(bad), "duration_ms": 0, "dead_letters": len(bad)})  # fmt: skip
        if sums:
            threshold = self.settings.volatility_threshold_for
            conn.execute(metrics.TRADE_MERGE, metrics.columns(
                [(s.symbol, s.window_start, s.n, s.sum_pq, s.sum_q, s.sum_p, s.sum_pp, threshold(s.symbol),
                  _ids_literal(s.ids)) for s in sums]))  # fmt: skip
            conn.execute(metrics.VOLUME_SPIKE_UPDATE, {
                "k": self.settings.volume_spike_factor, "n": self.settings.volume_spike_windows,
                "m": min(self.settings.volume_spike_min_windows, self.settings.volume_spike_windows),
                "symbols": sorted({s.symbol for s in sums}), "since": min(s.window_start for s in sums),
            })  # fmt: skip
        if spreads:
            data = [(r.symbol, r.window_start, r.n, r.sum_spread, r.max_spread, r.min_spread) for r in spreads]
            conn.execute(metrics.SPREAD_MERGE, [self.settings.spread_warning_factor, *metrics.columns(data)])
        conn.execute(metrics.OFFSETS_SAVE, metrics.columns([(e.topic, e.partition, e.last_offset + 1) for e in ends]))

    def record_progress(self, p: dict) -> None:
        """Spark's report of a batch: input rows and duration (stream_progress; the job has no watermark and
        drops nothing for lateness, so dropped_late stays 0)."""
        batch = p.get("batchId", -1)
        paced = self.paced_ms.pop(batch, 0)  # the sink's wait for the next start is no part of the batch
        for old in [b for b in self.paced_ms if b < batch]:  # reports never received
            del self.paced_ms[old]
        row = (p.get("name"), batch, p.get("runId"), _ts(p["timestamp"]), p.get("numInputRows", 0),
               max(p.get("batchDuration", 0) - paced, 0))  # fmt: skip
        try:
            self.in_transaction(lambda conn: conn.execute(metrics.PROGRESS_INSERT, row), retry=False)
        except psycopg.Error as exc:  # progress is informative: never fail the job for it
            log.warning("could not record progress: %s", exc)


def _offsets(conn, locked: bool = False) -> dict[tuple[str, int], int]:
    rows = (conn.execute(metrics.OFFSETS_LOCKED) if locked else conn.execute(metrics.OFFSETS)).fetchall()
    return {(topic, partition): offset for topic, partition, offset in rows}


def _ids_literal(ranges) -> str:
    """A window's counted ranges as the bigint[] literal '{first,last,first,last,...}'."""
    return "{" + ",".join(f"{first},{last}" for first, last in ranges) + "}"


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
