"""The market soak's own parts (`bench/e2e.py --market-soak`): retention set to minutes, the disk of every
component sampled, memory slopes, and the accounting of every event across the database and the archive.

The soak runs the whole market for an hour (by default) with every connection dropped every 15 minutes,
raw tables in chunks of CHUNK_MINUTES kept RETENTION_MINUTES, so that `cryptomon retention` archives and
drops chunks all along. At the end every generated event must be in the database or in the archive, once.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import duckdb
import psycopg
from common import bytes_under

from cryptomon.retention import archive

RETENTION_MINUTES = 10
CHUNK_MINUTES = 2
DROP_EVERY_SECONDS = 900  # every connection cut every 15 minutes
RETENTION_HEALTH_PORT = 39450
# goals (issue #26)
SLOPE_BOUND_MIB_PER_HOUR = 10
SPARK_RSS_BOUND_MIB = 1536
PIPELINE = ("ingest", "worker", "spark", "book", "retention")
# the ingestion's log lines (cryptomon.setup_logging's format) that say a connection was cut, and a gap's fill began
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+\s+\S+: (.*)$")
KEYS = {"trades": ("symbol", "event_type", "trade_id"), "book_ticker": ("symbol", "update_id")}


def retention_env(minutes: int = RETENTION_MINUTES) -> dict:
    """Retention of minutes, a pass every 30 s, horizons held 15 s."""
    age = f"{minutes}m"
    return {
        "CRYPTOMON_RETENTION_TRADES": age,
        "CRYPTOMON_RETENTION_BOOK_TICKER": age,
        "CRYPTOMON_RETENTION_ORDER_BOOK": age,
        "CRYPTOMON_RETENTION_INTERVAL_SECONDS": 30,
        "CRYPTOMON_RETENTION_HOLD_SECONDS": 15,
        "CRYPTOMON_RETENTION_HEALTH_PORT": RETENTION_HEALTH_PORT,
    }


def set_chunks(dsn: str, minutes: int = CHUNK_MINUTES) -> None:
    """Chunks of minutes for the raw tables (the chunks created from now on)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("trades", "book_ticker", "order_book_snapshots"):
            conn.execute("SELECT set_chunk_time_interval(%s, %s * interval '1 minute')", (table, minutes))


def stored_counts(conn, tables) -> dict[str, int]:
    """Rows in each table plus rows of its chunks already archived and dropped, in one snapshot (a chunk's
    drop and its archive_log row commit together)."""
    parts = [
        f"(SELECT count(*) FROM {t}) + (SELECT coalesce(sum(row_count), 0)::bigint FROM archive_log WHERE table_name = '{t}')"
        for t in tables
    ]
    row = conn.execute(f"SELECT {', '.join(parts)}").fetchone()
    return dict(zip(tables, row, strict=True))


def disk_sample(conn, kafka_dirs: list[Path], checkpoint: Path, archive_dir: Path) -> dict:
    """Bytes on disk per component, now."""
    return {
        "t": time.time(),
        "postgres": conn.execute("SELECT pg_database_size(current_database())").fetchone()[0],
        "kafka": sum(bytes_under(d) for d in kafka_dirs),
        "checkpoint": bytes_under(checkpoint) if checkpoint.exists() else 0,
        "archive": bytes_under(archive_dir) if archive_dir.exists() else 0,
    }


def slope_per_hour(values: list[float], every: float, skip: float = 0.25) -> float | None:
    """Least-squares slope of a series sampled every `every` seconds, per hour, over all but its first
    `skip` share (the warm-up)."""
    part = values[int(len(values) * skip) :]
    return least_squares([i * every / 3600 for i in range(len(part))], part)


def least_squares(xs: list[float], ys: list[float]) -> float | None:
    """Slope of the least-squares line through the points (None under three of them)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else None


def per_minute(series: dict[str, list[int]], every: float) -> dict[str, list[float]]:
    """Each process's RSS series (bytes, a sample every `every` seconds) as one value a minute, in MiB."""
    step = max(1, round(60 / every))
    return {n: [round(v / 2**20, 1) for v in values[::step]] for n, values in series.items()}


def disk_result(series: list[dict]) -> dict:
    """Per component: MiB at the start, the end, the most, each minute, and the growth per hour over the run's
    second half (by then retention drops as fast as data comes: bounded means about 0 there). The growth is the
    least-squares slope of the half's samples: the database's size is a saw (a chunk's worth of rows comes in,
    then the chunk is dropped at once), so its two ends alone say more about where the saw stood than about
    a trend."""
    out: dict = {}
    if len(series) < 2:
        return out
    half = series[len(series) // 2 :]
    hours = [(s["t"] - half[0]["t"]) / 3600 for s in half]
    for key in ("postgres", "kafka", "checkpoint", "archive"):
        slope = least_squares(hours, [s[key] / 2**20 for s in half])
        if slope is None:  # two samples: from one end to the other
            slope = (half[-1][key] - half[0][key]) / 2**20 / (hours[-1] or 1)
        out[key] = {
            "start_mib": round(series[0][key] / 2**20, 1),
            "end_mib": round(series[-1][key] / 2**20, 1),
            "max_mib": round(max(s[key] for s in series) / 2**20, 1),
            "second_half_mib_per_hour": round(slope, 1),
            "mib_per_sample": [round(s[key] / 2**20, 1) for s in series],
        }
    return out


def archive_accounting(conn, root: Path, work: Path) -> dict:
    """Every archive file verified; its rows against archive_log; and no event twice across the archive and
    the database (DuckDB over the files and the database's keys)."""
    files = list(archive.files(root))
    bad = []
    rows_in_files: dict[str, int] = {}
    for path in files:
        try:
            found = archive.verify(path)
            table = path.parts[-3]
            rows_in_files[table] = rows_in_files.get(table, 0) + found.rows
        except archive.ArchiveMismatch as exc:
            bad.append(str(exc))
    logged = dict(conn.execute("SELECT table_name, sum(row_count)::bigint FROM archive_log GROUP BY 1").fetchall())
    chunks = dict(conn.execute("SELECT table_name, count(*) FROM archive_log GROUP BY 1").fetchall())
    out: dict = {"files": len(files), "files_bad": bad, "chunks_dropped": chunks, "rows_in_files": rows_in_files,
                 "rows_logged": logged, "rows_in_files_equal_logged": rows_in_files == logged, "keys": {}}  # fmt: skip
    for table, key in KEYS.items():
        if not (root / table).exists():
            continue
        dump = work / f"{table}-keys.csv"
        columns = ", ".join(key)
        with (
            dump.open("wb") as f,
            conn.cursor().copy(f"COPY (SELECT {columns} FROM {table}) TO STDOUT (FORMAT csv)") as cp,
        ):
            for block in cp:
                f.write(block)
        names = ", ".join(f"'{k}': '{'BIGINT' if k.endswith('id') else 'VARCHAR'}'" for k in key)
        total, distinct = duckdb.sql(
            f"SELECT count(*), count(DISTINCT ({columns})) FROM (SELECT {columns} FROM "
            f"read_parquet('{root}/{table}/*/*.parquet') UNION ALL SELECT {columns} FROM "
            f"read_csv('{dump}', header = false, columns = {{{names}}}))"
        ).fetchall()[0]
        out["keys"][table] = {"events": total, "distinct": distinct, "once": total == distinct}
    return out


def archived_between(root: Path, since: float, until: float) -> int:
    """Rows of the raw tables' archive files ingested between `since` and `until` (epoch seconds)."""
    total = 0
    for table in KEYS:
        if any((root / table).glob("*/*.parquet")):
            total += duckdb.sql(
                f"SELECT count(*) FROM read_parquet('{root}/{table}/*/*.parquet') "
                f"WHERE ingestion_ts BETWEEN to_timestamp({since}) AND to_timestamp({until})"
            ).fetchall()[0][0]
    return total


def goals(run: dict) -> dict:
    slopes = run["rss_slope_mib_per_hour"]
    disk = run["disk"]
    return {
        "soak_pipeline_flat_<=10MiB/h": all(
            slopes.get(n) is not None and slopes[n] <= SLOPE_BOUND_MIB_PER_HOUR for n in PIPELINE if n in slopes
        ),
        "soak_spark_rss<=1.5GB": run["peak_rss_mb"].get("spark", 1e9) <= SPARK_RSS_BOUND_MIB,
        "soak_postgres_bounded_by_retention": bool(disk) and disk["postgres"]["second_half_mib_per_hour"] <= 100,
        "soak_exact_accounting_db_plus_archive": run["accounting"]["exact"]
        and all(k["once"] for k in run["archive"]["keys"].values())
        and run["archive"]["rows_in_files_equal_logged"]
        and not run["archive"]["files_bad"],
    }


def backfill_after_cuts(ingest_log: Path) -> list[dict]:
    """For each cut of the connections (the first "reconnecting" line of a burst), how many gaps the
    ingestion began to backfill before the next cut and how many seconds after the cut the last one began: a
    row older than the retention's age when it arrives is set aside (`before_archive_horizon`), so this must
    stay well below RETENTION_MINUTES."""
    cuts: list[dict] = []
    if not ingest_log.exists():
        return cuts
    t0 = None
    for line in ingest_log.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m is None:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = m.group(2)
        if ": reconnecting in " in message and (t0 is None or at - t0 > 60):
            t0 = at
            cuts.append({"gaps": 0, "last_fill_began_after_s": None})
        elif message.startswith("backfilling ") and cuts and t0 is not None:
            cuts[-1]["gaps"] += 1
            cuts[-1]["last_fill_began_after_s"] = round(at - t0, 1)
    return cuts
