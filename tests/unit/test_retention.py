"""Retention's pure parts: which chunks go when, the archive's files (exact decimals, whole or absent),
the ages' syntax and the worker's horizon cache."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptomon.db.horizons import Horizons, cut
from cryptomon.retention import archive, policy
from cryptomon.settings import SettingsError, load_settings, parse_age
from cryptomon.spark.queries import Cuts, cuts

T0 = datetime(2026, 12, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOLD = timedelta(seconds=60)


def chunks(n: int) -> list[policy.Chunk]:
    return [policy.Chunk("_timescaledb_internal", f"c{i}", T0 + i * MIN, T0 + (i + 1) * MIN) for i in range(n)]


def test_the_horizon_is_the_end_of_the_newest_chunk_wholly_too_old_and_only_moves_forward():
    cs = chunks(10)
    now = T0 + timedelta(minutes=10, seconds=30)
    cut = policy.cutoff(now, 5 * 60)  # 00:05:30: chunks ending at or before it are too old
    assert policy.next_horizon(cs, cut, None) == T0 + 5 * MIN
    assert policy.next_horizon(cs, cut, policy.Horizon(T0 + 5 * MIN, now)) is None  # already published
    assert policy.next_horizon(cs, cut, policy.Horizon(T0 + 7 * MIN, now)) is None  # never backwards
    assert policy.next_horizon(cs, policy.cutoff(now, 0), None) is None  # kept for ever
    assert policy.next_horizon(cs, T0 + 30 * timedelta(seconds=1), None) is None  # no chunk wholly before


def test_chunks_go_only_below_a_horizon_that_has_stood_for_the_hold():
    cs = chunks(10)
    published = policy.Horizon(T0 + 4 * MIN, T0 + 20 * MIN)
    assert policy.droppable(cs, None, T0 + 30 * MIN, HOLD) == []
    assert policy.droppable(cs, published, published.published_at + HOLD - timedelta(seconds=1), HOLD) == []
    due = policy.droppable(list(reversed(cs)), published, published.published_at + HOLD, HOLD)
    assert [c.name for c in due] == ["c0", "c1", "c2", "c3"]  # oldest first; c4 ends after the horizon


def test_ages_read_as_seconds_or_with_a_unit():
    assert [parse_age(x) for x in ("90", "30m", "12h", "7d", "2w", " 5 m")] == [90, 1800, 43200, 604800, 1209600, 300]
    for bad in ("7x", "-1", "1.5d", ""):
        with pytest.raises(ValueError):
            parse_age(bad)
    s = load_settings(retention_trades="30m", retention_book_ticker=120)
    assert (s.retention_trades, s.retention_book_ticker, s.retention_metrics) == (1800, 120, 0)
    with pytest.raises(SettingsError, match="CRYPTOMON_RETENTION_TRADES"):
        load_settings(retention_trades=-5)


def test_ages_that_would_let_a_writer_recreate_a_dropped_chunk_are_refused_by_the_settings():
    """Refused when the settings load, in every process (`cryptomon up` fails at once, not its retention child)."""
    with pytest.raises(SettingsError, match=r"^CRYPTOMON_RETENTION_METRICS must be 0 or at least a day more"):
        load_settings(retention_metrics="3d")  # Spark can recompute 7 days from Kafka
    with pytest.raises(SettingsError, match=r"^CRYPTOMON_RETENTION_ORDER_BOOK"):
        load_settings(retention_order_book="1h")  # the book stage starts 70 minutes back
    load_settings(retention_metrics="8d", retention_order_book="2h")
    load_settings(retention_order_book="5m", book_start_lookback_seconds=60)
    load_settings(retention_metrics="2d", kafka_retention="1d")  # Kafka keeps a day: 2 d is enough
    with pytest.raises(SettingsError, match="CRYPTOMON_RETENTION_METRICS"):
        load_settings(retention_metrics="8d", kafka_retention="10d")


COLUMNS = [
    archive.Column("event_time", "timestamp with time zone"),
    archive.Column("trade_id", "bigint"),
    archive.Column("price", "numeric(20,8)"),
    archive.Column("flag", "boolean"),
    archive.Column("levels", "numeric[]", precision=30, scale=12),
]
# as Retention reads them: times in epoch microseconds, decimals as PostgreSQL's text
ROWS = [
    (1_764_547_200_000_001, 1, "999999999999.99999999", True, ["0.000000000001", "123456789012345678.5"]),
    (1_764_547_200_500_000, 2, "0.00000001", False, []),
    (1_764_547_201_000_000, 3, "97000.10000000", True, ["1"]),
]
EXPECTED = archive.Expected(3, 1, 3, "trade_id", "price", Decimal("1000000097000.10000000"))


def test_an_archive_holds_the_exact_decimals_and_reads_without_cryptomon(tmp_path):
    path = archive.path_for(tmp_path, "trades", "_hyper_1_2_chunk", datetime(2026, 12, 1, 0, 5, tzinfo=UTC))
    assert path == tmp_path / "trades" / "date=2026-12-01" / "20261201T000500Z__hyper_1_2_chunk.parquet"
    size = archive.write(path, COLUMNS, iter([ROWS[:2], [], ROWS[2:]]), EXPECTED, {"table": "trades"})
    assert size == path.stat().st_size and list(archive.files(tmp_path)) == [path]
    assert archive.verify(path) == EXPECTED and archive.info_of(path)["table"] == "trades"
    t = pq.read_table(path)
    assert str(t.schema.field("price").type) == "decimal128(20, 8)"
    assert t.column("price").to_pylist() == [Decimal(r[2]) for r in ROWS]
    assert t.column("levels").to_pylist()[0] == [Decimal("0.000000000001"), Decimal("123456789012345678.5")]
    assert t.column("event_time").to_pylist()[0] == datetime(2025, 12, 1, 0, 0, 0, 1, tzinfo=UTC)
    day = duckdb.sql(
        f"SELECT sum(price), max(trade_id), any_value(date) FROM read_parquet('{tmp_path}/trades/*/*.parquet', "
        "hive_partitioning = true)"
    ).fetchall()
    assert day == [(Decimal("1000000097000.10000000"), 3, date(2026, 12, 1))]
    assert pl.read_parquet(path)["price"].to_list() == [Decimal(r[2]) for r in ROWS]


def test_small_reads_make_row_groups_of_the_set_size(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "ROW_GROUP_ROWS", 2)
    path = archive.path_for(tmp_path, "trades", "c", T0)
    archive.write(path, COLUMNS, iter([[r] for r in ROWS]), EXPECTED, {})  # a row a read
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 1]
    assert pq.read_table(path).column("trade_id").to_pylist() == [r[1] for r in ROWS]


def test_a_file_that_does_not_hold_what_the_chunk_held_is_never_left_whole(tmp_path):
    path = archive.path_for(tmp_path, "trades", "c", T0)
    wrong = archive.Expected(3, 1, 3, "trade_id", "price", Decimal("1000000097000.10000001"))  # one unit of 1e-8
    with pytest.raises(archive.ArchiveMismatch, match="the chunk held"):
        archive.write(path, COLUMNS, iter([ROWS]), wrong, {})
    assert not path.exists() and list(path.parent.iterdir()) == []
    archive.write(path, COLUMNS, iter([ROWS]), EXPECTED, {})
    path.write_bytes(path.read_bytes()[:-100])  # a damaged file
    with pytest.raises(archive.ArchiveMismatch):
        archive.verify(path)


def test_partials_left_by_a_killed_writer_are_removed_and_never_listed(tmp_path):
    folder = tmp_path / "trades" / "date=2026-12-01"
    folder.mkdir(parents=True)
    (folder / "x.parquet.partial").write_bytes(b"half")
    assert list(archive.files(tmp_path)) == []
    assert [p.name for p in archive.remove_partials(tmp_path)] == ["x.parquet.partial"]
    assert list(folder.iterdir()) == []


class Reads:
    def __init__(self) -> None:
        self.n = 0

    def execute(self, sql):
        self.n += 1
        return self

    def fetchall(self):
        return [("trades", 1_000 * self.n)]


def test_writers_read_the_horizons_again_every_few_seconds():
    clock = [0.0]
    h = Horizons(refresh=5.0, clock=lambda: clock[0])
    conn = Reads()
    assert h.get("trades", conn) == 1000 and h.get("book_ticker", conn) is None
    clock[0] = 4.9
    assert h.get("trades", conn) == 1000
    clock[0] = 5.0
    assert h.get("trades", conn) == 2000 and conn.n == 2


def test_the_streaming_jobs_cut_is_the_later_of_the_raw_horizon_and_the_metric_one_rounded_up_to_a_window():
    minute = 60_000
    t = 1_700_000_000_000 // minute * minute  # a window's start
    assert cut({}, "trades", "trade_metrics", minute) is None  # nothing archived: nothing set aside
    assert cut({"book_ticker": t}, "trades", "trade_metrics", minute) is None  # another table's
    assert cut({"trades": t + 7}, "trades", "trade_metrics", minute) == t + 7  # the worker's own comparison
    assert cut({"trade_metrics": t}, "trades", "trade_metrics", minute) == t
    # a horizon inside a window: that whole window starts before it, so its records all go aside
    assert cut({"trade_metrics": t + 1}, "trades", "trade_metrics", minute) == t + minute
    assert cut({"trades": t + 5 * minute, "trade_metrics": t + 1}, "trades", "trade_metrics", minute) == t + 5 * minute
    assert cut({"trades": t, "trade_metrics": t + 90_000}, "trades", "trade_metrics", minute) == t + 2 * minute
    assert cuts({"trades": t, "spread_metrics": t + 1}) == Cuts(t, t + 30_000)


@given(st.integers(0, 4_000_000_000_000), st.integers(0, 4_000_000_000_000), st.sampled_from([30_000, 60_000]))
def test_a_record_is_cut_exactly_when_its_window_starts_before_the_metric_horizon(h, ms, window):
    assert (ms < cut({"m": h}, "raw", "m", window)) == (ms // window * window < h)
