"""The archive: one Parquet file (zstd) per chunk, `<archive>/<table>/date=YYYY-MM-DD/<start>_<chunk>.parquet`.

Columns and types are the table's (decimals as Parquet decimals of the column's precision and scale, times as
UTC microseconds), so pyarrow, polars or DuckDB read a day without cryptomon. A file is written under a
`.partial` name, read back and checked against what the database counted in the chunk (rows, smallest and
largest id, the exact sum of a decimal column), and only then renamed: a `*.parquet` file is always whole.
What it was checked against is kept in the file's own metadata, so `cryptomon archive verify` needs no database.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql

SUFFIX = ".parquet"
PARTIAL = ".parquet.partial"  # a file being written: never matched by *.parquet
META = "cryptomon"  # key of the file's metadata: what the chunk held
COMPRESSION = "zstd"
DECIMAL128_DIGITS = 38
ROW_GROUP_ROWS = 100_000  # rows a Parquet row group holds (the reads come in smaller batches: Arrow's, compact)


def use_system_pool() -> None:
    """Arrow's buffers from the C library's malloc instead of pyarrow's default (mimalloc): writing chunks of the
    market soak's size (1M and 420k rows) one after another, a process's RSS rose 126 -> 232 MiB over 25 pairs of
    files with mimalloc (also with `release_unused()` after each file) and stayed at 143-155 MiB with the system
    pool. (The retention loop now writes from a child process per pass, which gives all of it back.)"""
    pa.set_memory_pool(pa.system_memory_pool())


class ArchiveMismatch(Exception):
    """A file does not hold what the chunk held (or what its metadata says): it is not used."""


@dataclass(frozen=True)
class Column:
    """A table column as PostgreSQL declares it, and the SQL that reads it for Arrow."""

    name: str
    pg_type: str  # format_type(): 'numeric(20,8)', 'timestamp with time zone', 'numeric[]', ...
    precision: int | None = None  # of a numeric without its own (found in the chunk's data)
    scale: int | None = None
    values: int = 1  # most values a row holds in it (an array's elements; measured with the precision)

    @property
    def is_array(self) -> bool:
        return self.pg_type.endswith("[]")

    @property
    def base(self) -> str:
        return self.pg_type.removesuffix("[]")

    def select(self) -> sql.Composed:
        """The SQL expression read for this column: what Arrow turns exactly into its type."""
        if self.base == "timestamp with time zone":
            expr = "(extract(epoch from {}) * 1000000)::bigint"
        elif self.base.startswith("numeric"):
            expr = "{}::text[]" if self.is_array else "{}::text"
        elif self.base == "jsonb":
            expr = "{}::text"
        else:
            expr = "{}"
        return sql.SQL(expr).format(sql.Identifier(self.name))

    def arrow_type(self) -> pa.DataType:
        element = _arrow_base(self.base, self.precision, self.scale)
        return pa.list_(element) if self.is_array else element


def _arrow_base(pg: str, precision: int | None, scale: int | None) -> pa.DataType:
    if pg == "timestamp with time zone":
        return pa.timestamp("us", tz="UTC")
    if pg.startswith("numeric"):
        if "(" in pg:
            precision, scale = (int(x) for x in pg[pg.index("(") + 1 : -1].split(","))
        p, s = max(precision or 1, 1), scale or 0
        return pa.decimal128(p, s) if p <= DECIMAL128_DIGITS else pa.decimal256(p, s)
    simple = {
        "bigint": pa.int64(),
        "integer": pa.int32(),
        "boolean": pa.bool_(),
        "text": pa.string(),
        "double precision": pa.float64(),
        "bytea": pa.binary(),
        "jsonb": pa.string(),
    }
    if pg not in simple:
        raise ValueError(f"no Arrow type for PostgreSQL's {pg}")
    return simple[pg]


def _read_type(column: Column) -> pa.DataType:
    """The Arrow type of what column.select() returns (before the cast to the column's own type)."""
    if column.base == "timestamp with time zone":
        return pa.list_(pa.int64()) if column.is_array else pa.int64()
    if column.base.startswith("numeric"):
        return pa.list_(pa.string()) if column.is_array else pa.string()
    return column.arrow_type()


def schema_of(columns: list[Column], meta: dict[str, str]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type()) for c in columns], metadata={META: _dump(meta)})


def batch_of(columns: list[Column], rows: list[tuple]) -> pa.RecordBatch:
    """Rows as read by the columns' select() -> a record batch of the table's types (exact casts)."""
    arrays = []
    for i, c in enumerate(columns):
        raw = pa.array([r[i] for r in rows], type=_read_type(c))
        arrays.append(raw.cast(c.arrow_type()) if raw.type != c.arrow_type() else raw)
    return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in columns])


@dataclass(frozen=True)
class Expected:
    """What the database counted in a chunk: the file must hold the same."""

    rows: int
    min_id: int | None = None
    max_id: int | None = None
    id_column: str | None = None
    sum_column: str | None = None
    total: Decimal | None = None  # exact sum of sum_column

    def as_meta(self) -> dict[str, str]:
        out = {"rows": str(self.rows)}
        for key in ("min_id", "max_id", "id_column", "sum_column", "total"):
            value = getattr(self, key)
            if value is not None:
                out[key] = str(value)
        return out

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> Expected:
        def num(key: str) -> int | None:
            return int(meta[key]) if key in meta else None

        return cls(
            int(meta["rows"]),
            num("min_id"),
            num("max_id"),
            meta.get("id_column"),
            meta.get("sum_column"),
            Decimal(meta["total"]) if "total" in meta else None,
        )


def _dump(meta: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(meta.items()))


def _load(text: bytes | str) -> dict[str, str]:
    text = text.decode() if isinstance(text, bytes) else text
    return dict(item.split("=", 1) for item in text.split(";") if item)


def path_for(root: Path, table: str, chunk: str, start: datetime) -> Path:
    day = start.astimezone(UTC)
    return root / table / f"date={day:%Y-%m-%d}" / f"{day:%Y%m%dT%H%M%SZ}_{chunk}{SUFFIX}"


def write(path: Path, columns: list[Column], batches: Iterable[list[tuple]], expected: Expected, info: dict) -> int:
    """Write the rows to `path` through a `.partial` file that is checked against `expected` before the
    rename (fsync'd, then the folder too). Returns the file's size. Raises ArchiveMismatch (nothing left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name.removesuffix(SUFFIX) + PARTIAL)
    schema = schema_of(columns, {**info, **expected.as_meta()})
    try:
        with pq.ParquetWriter(partial, schema, compression=COMPRESSION) as out:
            group: list[pa.RecordBatch] = []  # what the next row group holds, in Arrow's memory
            for rows in batches:
                if rows:
                    group.append(batch_of(columns, rows))
                if sum(b.num_rows for b in group) >= ROW_GROUP_ROWS:
                    out.write_table(pa.Table.from_batches(group), row_group_size=ROW_GROUP_ROWS)
                    group = []
            if group:
                out.write_table(pa.Table.from_batches(group), row_group_size=ROW_GROUP_ROWS)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        verify(partial, expected)
        os.replace(partial, path)
        _fsync_dir(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _metadata(path: Path) -> dict[bytes, bytes]:
    try:
        return pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveMismatch(f"{path}: unreadable ({exc})") from None


def expected_of(path: Path) -> Expected:
    meta = _metadata(path)
    if META.encode() not in meta:
        raise ArchiveMismatch(f"{path}: no {META} metadata (not written by cryptomon)")
    return Expected.from_meta(_load(meta[META.encode()]))


def info_of(path: Path) -> dict[str, str]:
    return _load(_metadata(path).get(META.encode(), b""))


def verify(path: Path, expected: Expected | None = None) -> Expected:
    """Read the whole file back and check rows, id range and exact sum against `expected` (default: the
    file's own metadata). Returns what was found. Raises ArchiveMismatch."""
    expected = expected or expected_of(path)
    wanted = [c for c in (expected.id_column, expected.sum_column) if c]
    rows, lo, hi, total = 0, None, None, Decimal(0)
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=262_144, columns=wanted or None):
            rows += batch.num_rows
            if expected.id_column and batch.num_rows:
                mm = pc.min_max(batch.column(expected.id_column)).as_py()
                lo = mm["min"] if lo is None else min(lo, mm["min"])
                hi = mm["max"] if hi is None else max(hi, mm["max"])
            if expected.sum_column and batch.num_rows:
                total += pc.sum(batch.column(expected.sum_column)).as_py() or 0
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveMismatch(f"{path}: unreadable ({exc})") from None
    found = Expected(
        rows,
        lo,
        hi,
        expected.id_column,
        expected.sum_column,
        total if expected.sum_column else None,
    )
    if found != expected:
        raise ArchiveMismatch(f"{path}: holds {found.as_meta()}, the chunk held {expected.as_meta()}")
    return found


def files(root: Path) -> Iterator[Path]:
    """Every archive file under `root`, by table and time."""
    yield from sorted(root.glob(f"*/date=*/*{SUFFIX}"))


def remove_partials(root: Path) -> list[Path]:
    """Delete what a process killed while writing left behind (never a whole file). Returns them."""
    left = sorted(root.glob(f"*/date=*/*{PARTIAL}"))
    for p in left:
        p.unlink(missing_ok=True)
    return left
