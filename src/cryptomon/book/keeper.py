"""The book stage's logic, pure: every book of the symbols of the partitions it reads, rebuilt from
binance.depth (Binance's diffs and the snapshots the ingestion used) by `DepthSync`, checked against
binance.book_ticker by `TopOfBookCheck`, and the rows of `order_book_snapshots` they make.

Rows follow from the records alone, in each partition's order, so that a replay makes the same rows:
a book that changed in an interval of event time (CRYPTOMON_BOOK_SNAPSHOT_SECONDS of `E`) gets one row,
the book after the last diff of that interval. The row is due when a diff of a later interval comes for
that symbol, or when the partition's event time (the largest `E` read from it) has passed the interval's
end by `GRACE_MS` (diffs of the symbols of a partition come within ~100 ms of each other).

A checkpoint (`checkpoint()`) holds what a restart needs to go on exactly: each synced book with every
level, its pending row, each partition's event time and the offset to replay from (the next one, or
for a book still waiting for its snapshot, that of the first diff it buffered).
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptomon.binance.book_check import Mismatch, TopOfBookCheck
from cryptomon.binance.orderbook import DepthDiff, DepthSnapshot, DepthSync, Level, OrderBook, Step
from cryptomon.binance.schema import BOOK_TICKER_EVENT, DEPTH_SNAPSHOT, SYMBOL, short_repr, validate_payload
from cryptomon.book.metrics import LiquidityWatch, Window, sample
from cryptomon.book.snapshot_asks import QueueNews
from cryptomon.errors import BadData

log = logging.getLogger(__name__)

GRACE_MS = 500


class BookRow(NamedTuple):
    """One row of order_book_snapshots."""

    snapshot_ms: int
    symbol: str
    last_update_id: int
    bid_prices: list[str]
    bid_qtys: list[str]
    ask_prices: list[str]
    ask_qtys: list[str]


class BookState(NamedTuple):
    """One row of order_book_state: a synced book as of a checkpoint."""

    symbol: str
    partition: int
    last_update_id: int
    last_event_ms: int
    bids: list[Level]
    asks: list[Level]
    known_bid: str | None
    known_ask: str | None
    row_pending: bool


class Checkpoint(NamedTuple):
    states: list[BookState]  # every synced book
    positions: dict[tuple[str, int], tuple[int, int]]  # (topic, partition) -> (offset to read from, event time)
    unsynced: list[str]  # books waiting for a snapshot: no state (they resume from their buffered diffs)


@dataclass
class SymbolBook:
    sync: DepthSync
    check: TopOfBookCheck
    partition: int
    pending: bool = False  # the book changed in its current interval: a row is due
    session: int | None = None  # the connection session of the symbol's last diff (the check's)
    needed_from: int | None = None  # offset of the first diff buffered while waiting for a snapshot
    checks_seen: int = 0  # the check's counts at the last sample (a window counts those since)
    mismatches_seen: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)  # the last few, for /health


@dataclass
class PartitionClock:
    """A partition's event time and the rows waiting for it: (interval end, symbol) in a heap."""

    watermark: int = 0
    due: list[tuple[int, str]] = field(default_factory=list)


class BookKeeper:
    def __init__(
        self,
        depth_topic: str,
        levels: int = 20,
        interval_ms: int = 1000,
        window_ms: int = 30_000,
        liquidity: LiquidityWatch | None = None,
    ):
        self.depth_topic = depth_topic
        self.levels = levels
        self.interval_ms = interval_ms
        self.window_ms = window_ms
        self.liquidity = liquidity or LiquidityWatch()
        self.books: dict[str, SymbolBook] = {}
        self.windows: dict[str, Window] = {}  # symbol -> its latest book_metrics window
        self.changed: dict[tuple[str, int], Window] = {}  # windows to write
        self.clocks: dict[int, PartitionClock] = {}
        self.next_offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to read
        self.records = 0
        self.bad_records = 0
        self.snapshots = 0  # depth snapshots read
        self.queue_news = QueueNews()  # what they said of the ingestion's queue, for the stage's asks
        self.mismatched: list[str] = []  # books resynced on a mismatch, for the stage to ask a snapshot of

    def _book(self, symbol: str, partition: int) -> SymbolBook:
        book = self.books.get(symbol)
        if book is None:
            book = self.books[symbol] = SymbolBook(DepthSync(symbol), TopOfBookCheck(), partition)
        return book

    def _end(self, event_ms: int) -> int:
        return (event_ms // self.interval_ms + 1) * self.interval_ms

    # ---------------------------------------------------------------- records

    def on_depth(
        self, value: dict, partition: int, offset: int, latest_ms: int | None = None, session: int | None = None
    ) -> list[BookRow]:
        """One record of binance.depth, validated as a diff or a snapshot (BadData, raised before anything
        changed, otherwise; `latest_ms` bounds a diff's event time; `session`: the connection session the
        ingestion said it came over). Returns the rows it made due."""
        self.next_offsets[(self.depth_topic, partition)] = offset + 1
        symbol = value.get("s")
        if value.get("e") == DEPTH_SNAPSHOT:
            if not isinstance(symbol, str) or not SYMBOL.fullmatch(symbol):
                raise BadData("bad_depth_snapshot", f"symbol {short_repr(symbol)}")
            snapshot = DepthSnapshot.from_rest(symbol, value)
            self.snapshots += 1
            self.queue_news.note(snapshot.symbol, snapshot.queued)
            book = self._book(snapshot.symbol, partition)
            return self._after(book, book.sync.on_snapshot(snapshot), offset, [])
        diff = DepthDiff.from_payload(value, latest_ms=latest_ms)
        book = self._book(diff.symbol, partition)
        book.session = session
        clock = self.clocks.setdefault(partition, PartitionClock())
        rows: list[BookRow] = []
        current = book.sync.book
        ended = current is not None and current.last_event_ms is not None and self._end(current.last_event_ms)
        if book.pending and ended and ended <= diff.event_ms:  # this diff starts a later interval: the row is due
            rows.append(self._row(book))
        step = book.sync.on_diff(diff)
        rows = self._after(book, step, offset, rows)
        if diff.event_ms > clock.watermark:
            clock.watermark = diff.event_ms
            while clock.due and clock.due[0][0] + GRACE_MS <= clock.watermark:
                end, sym = heapq.heappop(clock.due)
                other = self.books[sym]
                ob = other.sync.book
                if (
                    other.pending
                    and ob is not None
                    and ob.last_event_ms is not None
                    and self._end(ob.last_event_ms) == end
                ):
                    rows.append(self._row(other))
        return rows

    def _after(self, book: SymbolBook, step: Step, offset: int, rows: list[BookRow]) -> list[BookRow]:
        sync = book.sync
        if step is Step.BUFFERED and book.needed_from is None:
            book.needed_from = offset
        elif step is Step.GAP:
            if book.pending and sync.book is not None:
                rows.append(self._row(book))  # the last good book's row, before it goes stale
            book.check.reset()
            book.needed_from = offset
            log.warning("%s: depth gap at update %d: resyncing (the last good book stays, stale)", sync.symbol,
                        sync.book.last_update_id if sync.book else -1)  # fmt: skip
        elif step in (Step.APPLIED, Step.SYNCED):
            if step is Step.SYNCED:
                book.needed_from = None
                log.info("%s: book synced at update %d", sync.symbol, sync.book.last_update_id if sync.book else -1)
            assert sync.book is not None
            self._mark(book, sync.book)
            ob = sync.book
            if m := book.check.on_book(ob.last_update_id, ob.best_bid(), ob.best_ask(), book.session):
                self._mismatch(book, m)
        return rows

    def _mark(self, book: SymbolBook, ob: OrderBook) -> None:
        if ob.last_event_ms is None:  # synced on a snapshot alone: its row comes with the next diff
            return
        if not book.pending:
            book.pending = True
            heapq.heappush(self.clocks.setdefault(book.partition, PartitionClock()).due,
                           (self._end(ob.last_event_ms), ob.symbol))  # fmt: skip

    def on_ticker(self, value: dict, topic: str, partition: int, offset: int, session: int | None = None) -> None:
        """One record of binance.book_ticker, validated by the contract (BadData otherwise)."""
        self.next_offsets[(topic, partition)] = offset + 1
        book = self.books.get(value.get("s", ""))
        if book is None:
            return
        validate_payload(BOOK_TICKER_EVENT, value)
        for m in book.check.on_ticker(value["u"], (value["b"], value["B"]), (value["a"], value["A"]), session):
            self._mismatch(book, m)

    def _mismatch(self, book: SymbolBook, m: Mismatch) -> None:
        """Binance's own data says the book is wrong: it resyncs (its pending row, of a wrong book, is not
        written; the stage asks the ingestion for a snapshot)."""
        log.error("%s: book at %d has best %s / %s, bookTicker %d says %s / %s: resyncing", book.sync.symbol,
                  m.update_id, m.book[0], m.book[1], m.ticker_id, m.ticker[0], m.ticker[1])  # fmt: skip
        book.mismatches = [*book.mismatches[-4:], m]
        if book.sync.synced:
            book.sync.resync()
            book.check.reset()
            book.pending = False
            book.needed_from = None  # the next diff, buffered, sets it
            self.mismatched.append(book.sync.symbol)

    def waiting(self) -> list[str]:
        """The books waiting for a snapshot."""
        return [sym for sym, b in self.books.items() if not b.sync.synced]

    def buffered(self) -> int:
        """Diffs held by the books waiting for a snapshot."""
        return sum(len(b.sync.buffer) for b in self.books.values())

    def _row(self, book: SymbolBook) -> BookRow:
        ob = book.sync.book
        assert ob is not None and ob.last_event_ms is not None
        book.pending = False
        self._sample(book, ob, ob.last_event_ms)
        bids, asks = ob.top(self.levels)
        return BookRow(ob.last_event_ms, ob.symbol, ob.last_update_id, [p for p, _ in bids], [q for _, q in bids],
                       [p for p, _ in asks], [q for _, q in asks])  # fmt: skip

    def _sample(self, book: SymbolBook, ob: OrderBook, event_ms: int) -> None:
        """The row's book, a sample of its window's metrics (one already in the window: ignored)."""
        check = book.check
        checks, mismatches = check.checks - book.checks_seen, check.mismatches - book.mismatches_seen
        book.checks_seen, book.mismatches_seen = check.checks, check.mismatches
        start = event_ms // self.window_ms * self.window_ms
        window = self.windows.get(ob.symbol)
        if window is not None and (start < window.start_ms or ob.last_update_id <= window.last_update_id):
            return  # a replay of what the window holds
        if (s := sample(ob)) is None:
            return
        if window is None or start > window.start_ms:
            if window is not None:
                self.liquidity.closed(window)
            window = self.windows[ob.symbol] = Window(ob.symbol, start)
        window.add(s, ob.last_update_id, checks, mismatches)
        window.liquidity_drop = self.liquidity.flag(window)
        self.changed[(ob.symbol, start)] = window

    def take_windows(self) -> list[Window]:
        """The windows that changed since the last call (to write)."""
        out, self.changed = list(self.changed.values()), {}
        return out

    def restore_windows(self, windows: list[Window]) -> None:
        """The windows as written: each symbol's latest goes on (the samples it holds are not added again),
        the ones before it are the liquidity history."""
        by_symbol: dict[str, list[Window]] = {}
        for w in sorted(windows, key=lambda w: w.start_ms):
            by_symbol.setdefault(w.symbol, []).append(w)
        for symbol, ws in by_symbol.items():
            if (mine := self.windows.get(symbol)) is not None and mine.start_ms >= ws[-1].start_ms:
                continue  # this stage holds a later one already
            self.liquidity.history.pop(symbol, None)
            for w in ws[:-1]:
                self.liquidity.closed(w)
            self.windows[symbol] = ws[-1]

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self) -> Checkpoint:
        """Every synced book, and per (topic, partition) the offset a restart reads from with the
        partition's event time."""
        states = []
        replay_from = dict(self.next_offsets)
        for b in self.books.values():
            ob = b.sync.book
            if b.needed_from is not None:
                for (topic, part), nxt in self.next_offsets.items():
                    if part == b.partition and nxt > b.needed_from and topic == self.depth_topic:
                        replay_from[(topic, part)] = min(replay_from[(topic, part)], b.needed_from)
            if b.sync.synced and ob is not None:
                bids, asks = ob.levels()
                states.append(BookState(ob.symbol, b.partition, ob.last_update_id, ob.last_event_ms or 0, bids, asks,
                                        None if ob.known_bid is None else str(ob.known_bid),
                                        None if ob.known_ask is None else str(ob.known_ask), b.pending))  # fmt: skip
        positions = {
            key: (off, self.clocks.get(key[1], PartitionClock()).watermark if key[0] == self.depth_topic else 0)
            for key, off in replay_from.items()
        }
        unsynced = [sym for sym, b in self.books.items() if not b.sync.synced]
        return Checkpoint(states, positions, unsynced)

    def restore(self, states: list[BookState], watermarks: dict[int, int]) -> None:
        """Books and partition event times as a checkpoint left them."""
        for st in states:
            book = self._book(st.symbol, st.partition)
            snapshot = DepthSnapshot(st.symbol, st.last_update_id, tuple((p, q) for p, q in st.bids),
                                     tuple((p, q) for p, q in st.asks))  # fmt: skip
            ob = OrderBook.restored(snapshot, st.last_event_ms or None, st.known_bid, st.known_ask)
            book.sync.restore(ob)
            if st.row_pending:
                self._mark(book, ob)
        for part, mark in watermarks.items():
            self.clocks.setdefault(part, PartitionClock()).watermark = max(
                mark, self.clocks.get(part, PartitionClock()).watermark
            )

    def forget_partition(self, partition: int) -> None:
        """A partition of binance.depth went to another consumer: its books are its now."""
        for sym in [s for s, b in self.books.items() if b.partition == partition]:
            del self.books[sym]
            self.windows.pop(sym, None)
        self.clocks.pop(partition, None)

    def health(self) -> dict:
        return {
            sym: {
                "synced": b.sync.synced,
                "stale": b.sync.stale,
                "last_update_id": b.sync.book.last_update_id if b.sync.book else None,
                "resyncs": b.sync.resyncs,
                "checks": b.check.checks,
                "mismatches": b.check.mismatches,
            }
            for sym, b in sorted(self.books.items())
        }
