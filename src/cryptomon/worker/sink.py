"""Bulk writes to TimescaleDB: a batch's rows and dead letters land together or not at all; bad rows are
isolated by bisection.

A batch goes by COPY first (cryptomon.worker.copytext), which costs PostgreSQL a quarter less CPU a row but
cannot skip a row that is already there: a replayed row makes it fail with a unique violation, and then the
batch goes by the idempotent INSERT … ON CONFLICT DO NOTHING (one statement of array literals, why: docs/
design.md), as do the next COPY_COOLDOWN_BATCHES of that table on this connection, since replays come in runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache

import psycopg
from psycopg import errors

from cryptomon.db.errors import DATA_ERRORS
from cryptomon.db.horizons import BEFORE_HORIZON, Horizons
from cryptomon.errors import Unavailable
from cryptomon.names import BOOK_TICKER, TABLE_COLUMNS, TRADES
from cryptomon.worker.copytext import COPY_SQL, copy_text
from cryptomon.worker.rows import DeadLetter

log = logging.getLogger(__name__)

EPOCH_MS = "timestamptz 'epoch' + {} * interval '1 millisecond'"

INSERT_SQL = {
    TRADES: (
        f"INSERT INTO {TRADES} ({', '.join(TABLE_COLUMNS[TRADES])}) "
        f"SELECT {EPOCH_MS.format('t')}, s, e, id, p, q, m, {EPOCH_MS.format('ing')}, bf "
        "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::numeric[], %s::numeric[],"
        " %s::bool[], %s::bigint[], %s::bool[]) AS u(t, s, e, id, p, q, m, ing, bf) "
        "ON CONFLICT DO NOTHING"
    ),
    BOOK_TICKER: (
        f"INSERT INTO {BOOK_TICKER} ({', '.join(TABLE_COLUMNS[BOOK_TICKER])}) "
        f"SELECT {EPOCH_MS.format('ing')}, s, u, b, bq, a, aq "
        "FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[],"
        " %s::numeric[]) AS x(ing, s, u, b, bq, a, aq) "
        "ON CONFLICT DO NOTHING"
    ),
}

DEAD_LETTER_SQL = (
    "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, kafka_key, payload, error) "
    "SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bytea[], %s::bytea[], %s::text[]) "
    "ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING"
)
# parameters (column arrays) of the dead letters' statement
DEAD_LETTER_COLUMNS = DEAD_LETTER_SQL.count("%s")

# rows and dead letters of a batch, atomically, in one statement; the row count is the table's
WRITE_SQL = {table: f"WITH dead AS ({DEAD_LETTER_SQL}) {sql}" for table, sql in INSERT_SQL.items()}

# errors caused by the data of a row, not by the database being unavailable
ROW_ERRORS = DATA_ERRORS

# after a COPY met a row already in the table, this many batches of the table go by INSERT … ON CONFLICT
# (a replay after a crash is a run of such batches: each COPY of it would be parsed in vain)
COPY_COOLDOWN_BATCHES = 32


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached or is shutting down; retry later, commit nothing."""


class TimescaleSink:
    """One database connection writing batches: rows and dead letters in one statement each."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.conn: psycopg.Connection | None = None
        self.horizons = Horizons()
        self.copy_conflicts = 0  # COPYs that met a row already in the table (then written by INSERT)
        self._no_copy = {TRADES: 0, BOOK_TICKER: 0}  # batches left to write by INSERT, per table

    def connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            try:
                self.conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=5, application_name="cryptomon-worker"
                )
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(str(exc).strip()) from None
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def ping(self) -> bool:
        try:
            self.connect().execute("SELECT 1")
            return True
        except (DatabaseUnavailable, psycopg.OperationalError):
            self._reset()
            return False

    def _reset(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def write(
        self,
        table: str,
        rows: list[tuple],
        dead: list[DeadLetter],
        describe: Callable[[int, str], DeadLetter],
        text: bytes | None = None,
    ) -> tuple[int, list[DeadLetter]]:
        """Insert rows and dead letters atomically; returns (rows inserted, rejected rows as dead letters).
        `text`: the rows' COPY text when the caller has it (cryptomon.worker.bulk), else it is rendered here.

        When PostgreSQL rejects the batch because of the data in some row, those rows are isolated by
        bisection (in transactions that are rolled back), `describe(index, error)` turns each into a dead
        letter, and the rest is written."""
        self.connect()
        try:
            aside, keep = self._before_horizon(table, rows, describe)
            if aside:
                rows = [rows[i] for i in keep]
                dead = dead + aside
                describe = _reindexed(describe, keep)
                text = None  # it was the text of all the rows
            return self._write(table, rows, dead, describe, aside, text)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._reset()
            raise DatabaseUnavailable(str(exc).strip()) from None

    def _write(
        self,
        table: str,
        rows: list[tuple],
        dead: list[DeadLetter],
        describe: Callable[[int, str], DeadLetter],
        aside: list[DeadLetter],
        text: bytes | None = None,
    ) -> tuple[int, list[DeadLetter]]:
        try:
            return self._insert(table, rows, dead, text), aside
        except ROW_ERRORS as exc:
            log.warning("batch of %d %s rows rejected (%s): isolating the bad rows", len(rows), table, exc)
        bad = self._bisect(table, rows)
        rejected = {i for i, _ in bad}
        extra = [describe(i, err) for i, err in bad]
        good = [r for i, r in enumerate(rows) if i not in rejected]
        return self._insert(table, good, dead + extra), aside + extra

    def _before_horizon(
        self, table: str, rows: list[tuple], describe: Callable[[int, str], DeadLetter]
    ) -> tuple[list[DeadLetter], list[int]]:
        """Rows older than the table's archive horizon (cryptomon.retention.policy), as dead letters, and
        the indexes of the others. Each row's first field is its time column in epoch ms."""
        horizon = self.horizons.get(table, self.connect())
        if horizon is None or not rows or min(r[0] for r in rows) >= horizon:
            return [], []
        aside, keep = [], []
        for i, r in enumerate(rows):
            if r[0] < horizon:
                aside.append(describe(i, f"{BEFORE_HORIZON}: {table} before {horizon} ms is archived or about to be"))
            else:
                keep.append(i)
        return aside, keep

    def _insert(self, table: str, rows: list[tuple], dead: list[DeadLetter], text: bytes | None = None) -> int:
        """Rows and dead letters, atomically: by COPY when it may be (`text`: the rows' COPY text, if known),
        else (or when a row is already there) by INSERT … ON CONFLICT DO NOTHING. Returns the rows inserted."""
        if rows and self._no_copy[table] == 0 and (text := text or copy_text(table, rows)) is not None:
            try:
                return self._copy(table, text, dead)
            except errors.UniqueViolation:
                self.copy_conflicts += 1
                self._no_copy[table] = COPY_COOLDOWN_BATCHES
                log.debug("COPY of %d %s rows met a row already written: by INSERT … ON CONFLICT", len(rows), table)
        elif self._no_copy[table]:
            self._no_copy[table] -= 1
        return self._upsert(table, rows, dead)

    def _copy(self, table: str, text: bytes, dead: list[DeadLetter]) -> int:
        conn = self.connect()
        if not dead:  # autocommit: the COPY is its own transaction
            return _copied(conn, table, text)
        with conn.transaction():
            copied = _copied(conn, table, text)
            conn.execute(DEAD_LETTER_SQL, _columns(dead, DEAD_LETTER_COLUMNS))
        return copied

    def _upsert(self, table: str, rows: list[tuple], dead: list[DeadLetter]) -> int:
        conn = self.connect()
        if not dead:
            return conn.execute(INSERT_SQL[table], row_arrays(table, rows)).rowcount
        return conn.execute(WRITE_SQL[table], _columns(dead, DEAD_LETTER_COLUMNS) + row_arrays(table, rows)).rowcount

    def _bisect(self, table: str, rows: list[tuple]) -> list[tuple[int, str]]:
        """Indexes (and errors) of the rows PostgreSQL rejects; nothing is written."""
        bad: list[tuple[int, str]] = []
        conn = self.connect()

        def probe(lo: int, hi: int) -> None:
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute(INSERT_SQL[table], row_arrays(table, rows[lo:hi]))
            except ROW_ERRORS as exc:
                if hi - lo == 1:
                    bad.append((lo, str(exc).strip().splitlines()[0]))
                    return
                mid = (lo + hi) // 2
                probe(lo, mid)
                probe(mid, hi)

        probe(0, len(rows))
        return bad


def _copied(conn: psycopg.Connection, table: str, text: bytes) -> int:
    with conn.cursor() as cur:
        with cur.copy(COPY_SQL[table]) as copy:
            copy.write(text)
        return cur.rowcount


def _reindexed(describe: Callable[[int, str], DeadLetter], keep: list[int]) -> Callable[[int, str], DeadLetter]:
    """describe() for a list of the rows at `keep`: index j there is row keep[j] of the batch."""
    return lambda j, error: describe(keep[j], error)


@lru_cache(maxsize=4096)
def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain(values: Sequence) -> str:  # decimals that matched Binance's pattern: digits and one dot
    return "{" + ",".join(values) + "}"


def _ints(values: Sequence[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _bools(values: Sequence[bool]) -> str:
    return "{" + ",".join(["t" if v else "f" for v in values]) + "}"


def _texts(values: Sequence[str]) -> str:
    return "{" + ",".join(map(_quoted, values)) + "}"


# one encoder per column of each table's row (see cryptomon.worker.rows and INSERT_SQL's casts)
ENCODERS = {
    TRADES: (_ints, _texts, _texts, _ints, _plain, _plain, _bools, _ints, _bools),
    BOOK_TICKER: (_ints, _texts, _ints, _plain, _plain, _plain, _plain),
}


def row_arrays(table: str, rows: list[tuple]) -> list[str]:
    """A batch of rows as one array literal per column, in INSERT_SQL's parameter order."""
    encoders = ENCODERS[table]
    if not rows:
        return ["{}"] * len(encoders)
    return [encode(col) for encode, col in zip(encoders, zip(*rows, strict=True), strict=True)]


def _columns(rows: Sequence[tuple], n: int) -> list[list]:
    """Rows as n column arrays (n empty arrays for no rows)."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(n)]
