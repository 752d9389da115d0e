"""`cryptomon retention`: every CRYPTOMON_RETENTION_INTERVAL_SECONDS, per table, drop the chunks the policy
allows (each archived and verified first, in the transaction that drops it), publish the next horizon, and
prune the dead letters and Spark's progress rows by age.

A database that is down is waited out (the pass is retried at the next interval); a chunk whose archive does
not verify is kept, with a log line and a metric, and the other chunks go on. The long-lived process runs each
pass in a child process (isolated.call): the memory a pass touched leaves with the child.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge
from psycopg import sql

from cryptomon.observability import health_server
from cryptomon.retention import archive, isolated, policy
from cryptomon.retention.tables import METRICS, PRUNED, TABLES, Retained
from cryptomon.settings import Settings
from cryptomon.stopping import ignore_stop_signals, stop_on_signals

log = logging.getLogger(__name__)

# values (a scalar column's value, or an array's element) a round trip reads while archiving: they are Python
# objects until they are an Arrow batch, so few at a time. A budget of rows instead held 10 MB of Python objects
# for 10,000 `trades` rows but 126 MB for 10,000 `order_book_snapshots` rows (4 arrays of 20 levels each), and
# the process kept most of each such peak: its RSS rose ~6 MiB with every set of chunks (263 -> 382 MiB over 20).
# With this budget that fetch is ~1,200 snapshot rows; archive.ROW_GROUP_ROWS a row group.
FETCH_VALUES = 100_000

# held (pg_try_advisory_lock, for the pass's connection) by the one retention pass that may run on a database:
# two processes archiving the same chunk write the same partial file, and the one whose drop then fails
# (the two drops deadlock) deletes the file the other has just logged for the chunk it dropped
PASS_LOCK = 0x63727970746F6D  # "cryptom"
CHUNKS_SQL = (
    "SELECT chunk_schema, chunk_name, range_start, range_end FROM timescaledb_information.chunks "
    "WHERE hypertable_name = %s ORDER BY range_start"
)
HORIZON_SQL = "SELECT horizon, published_at FROM archive_horizon WHERE table_name = %s"
PUBLISH_SQL = (
    "INSERT INTO archive_horizon (table_name, horizon, published_at) VALUES (%s, %s, now()) "
    "ON CONFLICT (table_name) DO UPDATE SET horizon = EXCLUDED.horizon, published_at = EXCLUDED.published_at "
    "WHERE archive_horizon.horizon < EXCLUDED.horizon"
)
COLUMNS_SQL = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
    "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)
LOG_SQL = (
    "INSERT INTO archive_log (table_name, chunk_name, range_start, range_end, path, row_count, min_id, max_id, "
    "bytes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (table_name, chunk_name) DO NOTHING"
)


def one(cur: psycopg.Cursor) -> tuple:
    """The one row an aggregate query returns."""
    row = cur.fetchone()
    assert row is not None
    return row


def _numeric_digits(
    conn: psycopg.Connection, chunk: policy.Chunk, columns: list[tuple[str, bool]]
) -> list[tuple[int, int, int]]:
    """(largest scale, most integer digits, most values a row) of each (column, is an array) in the chunk, in
    one scan: a lateral aggregate per column and row (one row out even for an empty array), the maxima over
    the rows."""
    if not columns:
        return []
    laterals, maxima = [], []
    for i, (name, is_array) in enumerate(columns):
        value = sql.SQL("unnest(t.{}) AS u(v)" if is_array else "(SELECT t.{} AS v) AS u").format(sql.Identifier(name))
        alias = sql.Identifier(f"n{i}")
        laterals.append(
            sql.SQL(
                "LATERAL (SELECT max(scale(v)) AS s, max(length(trunc(abs(v))::text)) AS d, count(v) AS n FROM {}) AS {}"
            ).format(value, alias)
        )
        maxima.append(sql.SQL("max({a}.s), max({a}.d), max({a}.n)").format(a=alias))
    measured, per_row = sql.SQL(", ").join(maxima), sql.SQL(", ").join(laterals)  # from sql.SQL and Identifier
    found = one(conn.execute(sql.SQL("SELECT {} FROM {} AS t, {}").format(measured, chunk.identifier, per_row)))
    return [(found[3 * i] or 0, found[3 * i + 1] or 1, found[3 * i + 2] or 1) for i in range(len(columns))]


class Retention:
    """The retention passes over one database, with their metrics."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None):
        self.settings = settings
        self.root: Path = settings.archive_path
        self.hold = timedelta(seconds=settings.retention_hold_seconds)
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.m_dropped = Counter("cryptomon_retention_chunks_dropped", "Chunks dropped", ["table"], registry=r)
        self.m_rows = Counter("cryptomon_retention_rows_archived", "Rows written to the archive", ["table"], registry=r)
        self.m_bytes = Counter(
            "cryptomon_retention_archive_bytes", "Bytes written to the archive", ["table"], registry=r
        )
        self.m_failed = Counter(
            "cryptomon_retention_archive_failures", "Chunks kept: their archive failed or did not verify", ["table"],
            registry=r,
        )  # fmt: skip
        self.m_pruned = Counter("cryptomon_retention_rows_pruned", "Rows deleted by age", ["table"], registry=r)
        self.m_skipped = Counter(
            "cryptomon_retention_passes_skipped", "Passes skipped: another retention process held the lock", registry=r
        )
        self.m_db = Gauge("cryptomon_retention_db_up", "1 when the last pass reached the database", registry=r)
        self.last_pass: dict = {}
        self.db_ok = False
        self.stopping = threading.Event()

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self.settings.pg_dsn, autocommit=True, connect_timeout=5, application_name="cryptomon-retention"
        )

    # ---------------------------------------------------------------- one pass

    def run_once(self) -> dict:
        """One pass over every table; returns what it did (also kept for /health)."""
        report: dict = {"tables": {}, "pruned": {}, "pid": os.getpid()}
        with self.connect() as conn:
            if not one(conn.execute("SELECT pg_try_advisory_lock(%s)", (PASS_LOCK,)))[0]:
                log.error("another retention process is running a pass on this database: this pass is skipped "
                          "(run one `cryptomon retention` a database)")  # fmt: skip
                return self.record({**report, "skipped": "another retention process holds the lock"})
            if self.settings.archive:  # the lock held: a partial file is no other pass's write in progress
                for p in archive.remove_partials(self.root):
                    log.warning("removed %s, left by an archive write that did not finish", p)
            for spec in TABLES:
                if spec.age(self.settings) > 0:
                    report["tables"][spec.table] = self._table(conn, spec)
            for table, column, setting in PRUNED:
                age = int(getattr(self.settings, setting))
                if age > 0:
                    n = conn.execute(
                        sql.SQL("DELETE FROM {} WHERE {} < now() - %s * interval '1 second'").format(
                            sql.Identifier(table), sql.Identifier(column)
                        ),
                        (age,),
                    ).rowcount
                    report["pruned"][table] = n
        return self.record(report)

    def record(self, report: dict) -> dict:
        """A pass's report into the metrics and /health (the same whether the pass ran here or in a child)."""
        self.db_ok = True
        self.m_db.set(1)
        self.m_skipped.inc(1 if "skipped" in report else 0)
        for table, done in report["tables"].items():
            for d in done["dropped"]:
                self.m_dropped.labels(table).inc()
                self.m_rows.labels(table).inc(d["rows"] if d["path"] else 0)
                self.m_bytes.labels(table).inc(d["bytes"] or 0)
            self.m_failed.labels(table).inc(len(done["kept"]))
        for table, n in report["pruned"].items():
            self.m_pruned.labels(table).inc(n)
        self.last_pass = {"at": time.time(), **report}
        return report

    def _table(self, conn: psycopg.Connection, spec: Retained) -> dict:
        now = one(conn.execute("SELECT now()"))[0]
        chunks = [policy.Chunk(*row) for row in conn.execute(CHUNKS_SQL, (spec.table,))]
        published = self._horizon(conn, spec.table)
        out: dict = {"chunks": len(chunks), "dropped": [], "kept": []}
        due = policy.droppable(chunks, published, now, self.hold)
        for chunk in due:
            try:
                out["dropped"].append(self._archive_and_drop(conn, spec, chunk))
            except (archive.ArchiveMismatch, OSError) as exc:
                log.error("%s: chunk %s kept, its archive failed: %s", spec.table, chunk.name, exc)
                out["kept"].append({"chunk": chunk.name, "error": str(exc)})
        dropped = {d["chunk"] for d in out["dropped"]}
        left = [c for c in chunks if c.name not in dropped]
        waiting = published is not None and any(c.end <= published.at for c in left)
        horizon = policy.next_horizon(left, policy.cutoff(now, spec.age(self.settings)), published)
        if horizon is not None and not waiting:  # a new horizon would start the hold of those again
            conn.execute(PUBLISH_SQL, (spec.table, horizon))
            log.info("%s: rows before %s are set aside from now on; their chunks go in %ss", spec.table, horizon,
                     self.settings.retention_hold_seconds)  # fmt: skip
        current = horizon or (published.at if published else None)
        out["horizon"] = current.isoformat() if current else None
        return out

    @staticmethod
    def _horizon(conn: psycopg.Connection, table: str) -> policy.Horizon | None:
        row = conn.execute(HORIZON_SQL, (table,)).fetchone()
        return policy.Horizon(*row) if row else None

    def _archive_and_drop(self, conn: psycopg.Connection, spec: Retained, chunk: policy.Chunk) -> dict:
        """In one transaction: lock the chunk against writes, count it, write and verify its file, log it and
        drop it. A crash anywhere before the commit leaves the chunk where it was (and no whole file that
        the next pass would not rewrite the same)."""
        started = time.monotonic()
        with conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(chunk.identifier))
            expected = self._count(conn, spec, chunk)
            path, size = None, None
            if self.settings.archive:
                columns = self._columns(conn, chunk)
                path = archive.path_for(self.root, spec.table, chunk.name, chunk.start)
                info = {
                    "table": spec.table,
                    "chunk": chunk.name,
                    "range_start": chunk.start.isoformat(),
                    "range_end": chunk.end.isoformat(),
                }
                size = archive.write(path, columns, self._rows(conn, chunk, columns), expected, info)
            try:
                gone = [r[0] for r in conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => %s, newer_than => %s)",
                    (spec.table, chunk.end, chunk.start),
                )]  # fmt: skip
                if gone != [f"{chunk.schema}.{chunk.name}"]:
                    raise archive.ArchiveMismatch(f"drop_chunks would drop {gone}, not just {chunk.name}: rolled back")
                conn.execute(LOG_SQL, (spec.table, chunk.name, chunk.start, chunk.end, str(path) if path else None,
                                       expected.rows, expected.min_id, expected.max_id, size))  # fmt: skip
            except BaseException:  # rolled back: the chunk stays, so its file goes (it would hold its rows twice)
                if path is not None:
                    path.unlink(missing_ok=True)
                raise
        log.info("%s: chunk %s [%s, %s) of %d rows %s and dropped in %.1f s", spec.table, chunk.name, chunk.start,
                 chunk.end, expected.rows, f"archived to {path} ({size} bytes)" if path else "not archived (off)",
                 time.monotonic() - started)  # fmt: skip
        return {"chunk": chunk.name, "rows": expected.rows, "path": str(path) if path else None, "bytes": size}

    @staticmethod
    def _count(conn: psycopg.Connection, spec: Retained, chunk: policy.Chunk) -> archive.Expected:
        parts: list[sql.Composable] = [sql.SQL("count(*)")]
        if spec.id_column:
            parts += [sql.SQL(f"{f}({{}})").format(sql.Identifier(spec.id_column)) for f in ("min", "max")]
        if spec.sum_column:
            parts.append(sql.SQL("coalesce(sum({}), 0)").format(sql.Identifier(spec.sum_column)))
        aggregates = sql.SQL(", ").join(parts)
        row = one(conn.execute(sql.SQL("SELECT {} FROM {}").format(aggregates, chunk.identifier)))
        rows, rest = row[0], list(row[1:])
        lo, hi = (rest.pop(0), rest.pop(0)) if spec.id_column else (None, None)
        total = Decimal(rest.pop(0)) if spec.sum_column else None
        return archive.Expected(rows, lo, hi, spec.id_column, spec.sum_column, total)

    @staticmethod
    def _columns(conn: psycopg.Connection, chunk: policy.Chunk) -> list[archive.Column]:
        """The chunk's columns; a numeric without precision gets the largest the chunk's data needs, every
        such column measured in one scan of the chunk."""
        declared = list(conn.execute(COLUMNS_SQL, (chunk.qualified,)))
        unbounded = [
            (name, pg_type.endswith("[]")) for name, pg_type in declared if pg_type in ("numeric", "numeric[]")
        ]
        found = dict(zip([name for name, _ in unbounded], _numeric_digits(conn, chunk, unbounded), strict=True))
        out = []
        for name, pg_type in declared:
            if name in found:
                scale, digits, values = found[name]
                out.append(archive.Column(name, pg_type, digits + scale, scale, values))
            else:
                out.append(archive.Column(name, pg_type))
        return out

    @staticmethod
    def _rows(conn: psycopg.Connection, chunk: policy.Chunk, columns: list[archive.Column]) -> Iterator[list[tuple]]:
        select = sql.SQL(", ").join(c.select() for c in columns)
        per_fetch = max(1, FETCH_VALUES // sum(c.values for c in columns))
        with conn.cursor(name=f"archive_{chunk.name}") as cur:
            cur.itersize = per_fetch
            cur.execute(sql.SQL("SELECT {} FROM {}").format(select, chunk.identifier))
            while rows := cur.fetchmany(per_fetch):
                yield rows

    # ---------------------------------------------------------------- the process

    def run(self) -> None:
        while not self.stopping.is_set():
            self.pass_in_child()
            self.stopping.wait(self.settings.retention_interval_seconds)

    def pass_in_child(self) -> dict | None:
        """One pass in a child process; its report (recorded here), or None when it failed (the next pass
        retries; the loop never dies). In the market soak, a loop that ran its passes itself rose from 105 to
        ~270 MiB RSS in the first half hour of archiving (+61.8 MiB/h over the last three quarters), with
        Arrow's system pool and malloc_trim after each pass."""
        try:
            report = isolated.call(_pass, self.settings, name="cryptomon-retention-pass")
        except (isolated.ChildFailed, isolated.ChildDied) as exc:
            log.error("retention pass failed, the next one retries it: %s", exc)
            return None
        if "database_unavailable" in report:
            self.db_ok = False
            self.m_db.set(0)
            log.warning("database unavailable, retention waits for the next pass: %s", report["database_unavailable"])
            return None
        return self.record(report)

    def health(self) -> tuple[bool, dict]:
        archive_dir = str(self.root.resolve()) if self.settings.archive else None
        return self.db_ok, {"archive": archive_dir, "last_pass": self.last_pass}


def _pass(settings: Settings) -> dict:
    """A pass as the child runs it: the report, or why the database could not be reached. The signals that
    stop the loop (SIGTERM to it, Ctrl-C to its terminal's process group) do not cut the pass: the loop stops
    after it."""
    ignore_stop_signals()
    archive.use_system_pool()
    try:
        return Retention(settings).run_once()
    except psycopg.OperationalError as exc:
        return {"database_unavailable": str(exc).strip()}


def main(settings: Settings) -> None:
    retention = Retention(settings)
    # SIGTERM (`cryptomon up`, systemd, a container's stop) ends the loop after the pass in flight: its child
    # finishes and answers, nothing goes on after the process is gone
    stop_on_signals(retention.stopping)
    server = health_server(settings, settings.retention_health_port, retention.health, retention.registry)
    if server:
        server.start()
    kept = {t.table: t.age(settings) or "for ever" for t in TABLES if t not in METRICS or settings.retention_metrics}
    log.info("retention every %ss: %s; archive %s", settings.retention_interval_seconds, kept,
             retention.root if settings.archive else "off")  # fmt: skip
    try:
        retention.run()
    finally:
        if server:
            server.stop()
    log.info("retention stopped")
