"""The book stage's writes: rows, metric windows, dead letters and checkpoints, in one transaction each
time, so that the rows written and the place a restart resumes from never disagree."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from cryptomon.book.keeper import BookRow, BookState, Checkpoint
from cryptomon.book.metrics import Window
from cryptomon.errors import Unavailable

log = logging.getLogger(__name__)

ROW_SQL = (
    "INSERT INTO order_book_snapshots (snapshot_time, symbol, last_update_id, bid_prices, bid_qtys, ask_prices, "
    "ask_qtys) VALUES (timestamptz 'epoch' + %s * interval '1 millisecond', %s, %s, %s::numeric[], %s::numeric[], "
    "%s::numeric[], %s::numeric[]) ON CONFLICT DO NOTHING"
)
METRIC_COLUMNS = (
    "window_start", "symbol", "last_update_id", "samples", "mid", "microprice", "spread_sum", "spread_bps_sum",
    "spread_max", "depth_10bps_samples", "bid_depth_10bps_sum", "ask_depth_10bps_sum", "imbalance_10bps_sum",
    "depth_1pct_samples", "bid_depth_1pct_sum", "ask_depth_1pct_sum", "checks", "mismatches", "liquidity_drop",
)  # fmt: skip
# a window only moves forward: a replay's older state of it never overwrites a newer one
METRICS_SQL = (
    f"INSERT INTO book_metrics ({', '.join(METRIC_COLUMNS)}) VALUES (timestamptz 'epoch' + %s * interval "
    f"'1 millisecond', {', '.join(['%s'] * (len(METRIC_COLUMNS) - 1))}) ON CONFLICT (symbol, window_start) DO UPDATE "
    f"SET {', '.join(f'{c} = EXCLUDED.{c}' for c in METRIC_COLUMNS[2:])}, updated_at = now() "
    "WHERE book_metrics.last_update_id < EXCLUDED.last_update_id"
)
WINDOWS_SQL = (  # each symbol's latest windows, as Window.from_row reads them
    f"SELECT {', '.join(('(extract(epoch FROM window_start) * 1000)::bigint', *METRIC_COLUMNS[1:]))} FROM "
    "(SELECT *, row_number() OVER (PARTITION BY symbol ORDER BY window_start DESC) AS nth FROM book_metrics "
    "WHERE window_start >= timestamptz 'epoch' + %s * interval '1 millisecond') AS w WHERE nth <= %s"
)
DEAD_LETTER_SQL = (
    "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, kafka_key, payload, error) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING"
)
STATE_SQL = (
    "INSERT INTO order_book_state (consumer_group, symbol, last_update_id, last_event_ms, bids, asks, known_bid, "
    "known_ask, kafka_partition, row_pending, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
    "ON CONFLICT (consumer_group, symbol) DO UPDATE SET last_update_id = EXCLUDED.last_update_id, "
    "last_event_ms = EXCLUDED.last_event_ms, bids = EXCLUDED.bids, asks = EXCLUDED.asks, "
    "known_bid = EXCLUDED.known_bid, known_ask = EXCLUDED.known_ask, kafka_partition = EXCLUDED.kafka_partition, "
    "row_pending = EXCLUDED.row_pending, updated_at = now()"
)
POSITION_SQL = (
    "INSERT INTO book_positions (consumer_group, topic, kafka_partition, next_offset, event_watermark_ms) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE SET "
    "next_offset = EXCLUDED.next_offset, event_watermark_ms = EXCLUDED.event_watermark_ms"
)

DeadLetterRow = tuple[str, int, int, bytes | None, bytes, str]  # topic, partition, offset, key, payload, error


class BookStore:
    """One connection: `write()` stores rows, dead letters and (when given) a checkpoint atomically."""

    def __init__(self, dsn: str, group: str):
        self.dsn, self.group = dsn, group
        self.conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            try:
                self.conn = psycopg.connect(self.dsn, connect_timeout=5)
            except psycopg.OperationalError as exc:
                raise Unavailable(f"database: {exc}") from None
        return self.conn

    def write(
        self,
        rows: Sequence[BookRow],
        letters: Sequence[DeadLetterRow],
        checkpoint: Checkpoint | None = None,
        windows: Sequence[Window] = (),
    ) -> None:
        """Raises Unavailable when the database cannot take it (nothing is written then)."""
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                if rows:
                    cur.executemany(ROW_SQL, rows)
                if windows:
                    cur.executemany(METRICS_SQL, [w.row() for w in windows])
                if letters:
                    cur.executemany(DEAD_LETTER_SQL, letters)
                if checkpoint is not None:
                    states, positions, unsynced = checkpoint
                    if states:
                        cur.executemany(STATE_SQL, [
                            (self.group, s.symbol, s.last_update_id, s.last_event_ms, Jsonb(s.bids), Jsonb(s.asks),
                             s.known_bid, s.known_ask, s.partition, s.row_pending) for s in states
                        ])  # fmt: skip
                    if unsynced:  # a book resyncing restarts from its buffered diffs, not from an old state
                        cur.execute("DELETE FROM order_book_state WHERE consumer_group = %s AND symbol = ANY(%s)",
                                    (self.group, unsynced))  # fmt: skip
                    cur.executemany(POSITION_SQL, [
                        (self.group, topic, part, off, mark) for (topic, part), (off, mark) in positions.items()
                    ])  # fmt: skip
        except psycopg.OperationalError as exc:
            self.close()
            raise Unavailable(f"database: {exc}") from None

    def load(self, partitions: Sequence[int]) -> tuple[list[BookState], dict[tuple[str, int], tuple[int, int]]]:
        """The books and positions of this group's checkpoint for these partitions."""
        try:
            conn = self._connection()
            with conn.transaction():
                states = [
                    BookState(sym, part, uid, ems, [tuple(x) for x in bids], [tuple(x) for x in asks], kb, ka, pend)
                    for sym, part, uid, ems, bids, asks, kb, ka, pend in conn.execute(
                        "SELECT symbol, kafka_partition, last_update_id, last_event_ms, bids, asks, known_bid, "
                        "known_ask, row_pending FROM order_book_state WHERE consumer_group = %s "
                        "AND kafka_partition = ANY(%s)", (self.group, list(partitions)))
                ]  # fmt: skip
                positions = {
                    (topic, part): (off, mark)
                    for topic, part, off, mark in conn.execute(
                        "SELECT topic, kafka_partition, next_offset, event_watermark_ms FROM book_positions "
                        "WHERE consumer_group = %s AND kafka_partition = ANY(%s)", (self.group, list(partitions)))
                }  # fmt: skip
        except psycopg.OperationalError as exc:
            self.close()
            raise Unavailable(f"database: {exc}") from None
        return states, positions

    def load_windows(self, since_ms: int, per_symbol: int) -> list[Window]:
        """Each symbol's latest `per_symbol` book_metrics windows that start at or after `since_ms`."""
        try:
            conn = self._connection()
            with conn.transaction():
                rows = conn.execute(WINDOWS_SQL, (since_ms, per_symbol)).fetchall()
        except psycopg.OperationalError as exc:
            self.close()
            raise Unavailable(f"database: {exc}") from None
        return [Window.from_row(r) for r in rows]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
