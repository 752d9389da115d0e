"""Binance's diff-depth order book, kept by the procedure of the spot WebSocket docs ("How to manage a
local order book correctly", web-socket-streams.md):

1. buffer the `<symbol>@depth@100ms` events, noting the `U` of the first;
2. get a depth snapshot from /api/v3/depth;
3. if the snapshot's `lastUpdateId` is below that first `U`, get another;
4. drop the buffered events with `u` <= `lastUpdateId`; the first one left has `lastUpdateId` within [U; u];
5. the book is the snapshot, its update id `lastUpdateId`;
6. apply every buffered event and every event after it: one with `u` below the book's id is ignored, one
   with `U` above the book's id + 1 means something was lost, so the book is thrown away and the procedure
   starts over; otherwise each level's quantity is set (absolute quantities; 0 removes the level, also one
   the book does not hold) and the book's id becomes `u`.

Pure: no I/O. `DepthSync` says what to do next (fetch a snapshot, fetch another); the caller does it. A
book being resynced keeps its last good state, readable and marked stale. Levels are keyed by their exact
decimal value and keep the exchange's strings, so what is stored is what Binance sent.

The snapshot holds at most 5,000 levels a side: levels beyond the deepest one it held are known only once
they change ("you won't learn the quantities for the levels outside of the initial snapshot unless they
change"); `OrderBook.known_bid` / `known_ask` say how deep the book is complete.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal
from enum import Enum
from typing import NamedTuple

import orjson
from sortedcontainers import SortedList

from cryptomon.binance import limits
from cryptomon.binance.payloads import levels_ok
from cryptomon.binance.schema import DEPTH, PRICE, QUANTITY, SYMBOL, check_time, is_id, is_zero, short_repr
from cryptomon.errors import BadData

Level = tuple[str, str]  # (price, quantity) as Binance wrote them
_DIFF_FIELDS = frozenset({"e", "E", "s", "U", "u", "b", "a"})
_SCALARS = (str, int, float, bool, type(None))
ZERO, BEYOND = Decimal(0), Decimal("Infinity")  # how deep a whole side is known: every bid, every ask
# price·qty and their sums, exact: Binance's decimals have at most 20 + 8 digits, a product 56, a sum of a
# side's levels a few more (the default context keeps 28 and would round large ones)
NOTIONAL = Context(prec=80)
# the symbols an ingestion's snapshot record may list as still waiting for theirs (Binance lists some 3,000
# spot symbols; one instance follows fewer)
QUEUED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class DepthDiff:
    """One `depthUpdate` event: every change of the book between update ids `first_id` (U) and `final_id` (u)."""

    symbol: str
    first_id: int
    final_id: int
    event_ms: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    @classmethod
    def from_payload(cls, data: object, symbol: str | None = None, latest_ms: int | None = None) -> DepthDiff:
        """A validated diff, or BadData saying which field is wrong (hostile input never gets further)."""
        if not isinstance(data, dict) or data.get("e") != DEPTH:
            raise BadData("bad_depth", f"not a depthUpdate: {short_repr(data)}")
        if len(data) > limits.MAX_PAYLOAD_FIELDS:
            raise BadData("bad_depth", f"{len(data)} fields (at most {limits.MAX_PAYLOAD_FIELDS})")
        for name, value in data.items():  # fields Binance may add are kept, so they are bounded as elsewhere
            if name not in _DIFF_FIELDS and not (
                isinstance(value, _SCALARS) and len(str(value)) <= limits.MAX_UNKNOWN_STRING
            ):
                raise BadData("bad_depth", f"field {short_repr(name)}: {short_repr(value)}")
        s = data.get("s")
        if not isinstance(s, str) or not SYMBOL.fullmatch(s) or (symbol is not None and s != symbol):
            raise BadData("bad_depth", f"symbol {short_repr(s)} (stream's {symbol})")
        first, final = data.get("U"), data.get("u")
        if not is_id(first) or not is_id(final) or first > final:
            raise BadData("bad_depth", f"update ids U={short_repr(first)} u={short_repr(final)}")
        event_ms = check_time("E", data.get("E"), latest_ms)
        return cls(s, first, final, event_ms, _levels(data.get("b"), "b"), _levels(data.get("a"), "a"))


class Packed(NamedTuple):
    """A diff waiting in a book's buffer: its ids as they are, the rest packed into one bytes object. At the
    whole market 400 books wait minutes for their snapshots (the REST weight paces them), thousands of diffs
    each. As objects (a tuple and two strings a level) a diff of the real BTCUSDT/ETHUSDT capture takes
    6.5 kB, packed 1.2 kB; 8 minutes of the book stage at the whole market under tracemalloc
    (bench/ingest_heap.py --stage book) held 680 of its 920 traced MiB in diffs' levels and strings."""

    first_id: int
    final_id: int
    rest: bytes  # orjson of (event time, bids, asks)

    @classmethod
    def of(cls, diff: DepthDiff) -> Packed:
        # copied (bytes(x) of a bytes is x): the object orjson returns keeps the capacity it grew to, ~6.7 kB
        # for a 1.2 kB diff of the real BTCUSDT capture
        rest = orjson.dumps((diff.event_ms, diff.bids, diff.asks))
        return cls(diff.first_id, diff.final_id, bytes(memoryview(rest)))

    def unpack(self, symbol: str) -> DepthDiff:
        event_ms, bids, asks = orjson.loads(self.rest)
        return DepthDiff(symbol, self.first_id, self.final_id, event_ms, tuple(map(tuple, bids)),
                         tuple(map(tuple, asks)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """An /api/v3/depth answer: the book as of update id `last_update_id`."""

    symbol: str
    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    limit: int | None = None  # the levels asked for: a side with fewer is the whole side (None: not known)
    queued: tuple[str, ...] = ()  # the books the ingestion was still fetching a snapshot for, oldest first

    @classmethod
    def from_rest(cls, symbol: str, body: object) -> DepthSnapshot:
        """A validated answer (the ingestion's record of one adds the `limit` it asked for and its `queued`)."""
        if not isinstance(body, dict) or not is_id(body.get("lastUpdateId")):
            raise BadData("bad_depth_snapshot", f"no lastUpdateId: {short_repr(body)}")
        limit = body.get("limit")
        if limit is not None and not (is_id(limit) and 1 <= limit <= limits.DEPTH_LEVELS_MAX):
            raise BadData("bad_depth_snapshot", f"limit {short_repr(limit)}")
        queued = body.get("queued", [])
        if not (
            isinstance(queued, list)
            and len(queued) <= QUEUED_MAX
            and all(isinstance(s, str) and SYMBOL.fullmatch(s) for s in queued)
        ):
            raise BadData("bad_depth_snapshot", f"queued: not a list of at most {QUEUED_MAX} symbols")
        return cls(symbol, body["lastUpdateId"], _levels(body.get("bids"), "bids"), _levels(body.get("asks"), "asks"),
                   limit, tuple(queued))  # fmt: skip


def _levels(raw: object, name: str) -> tuple[Level, ...]:
    if not isinstance(raw, list) or len(raw) > limits.DEPTH_LEVELS_MAX:
        raise BadData("bad_depth", f"{name}: not a list of at most {limits.DEPTH_LEVELS_MAX} levels")
    # the common case in one regex call (payloads.levels_ok); anything else level by level, which says why
    if all(type(level) is list and len(level) == 2 for level in raw):
        with contextlib.suppress(TypeError):  # a price or quantity that is not a string
            if levels_ok(raw):
                return tuple(map(tuple, raw))
    return levels_one_by_one(raw, name)


def levels_one_by_one(raw: list, name: str) -> tuple[Level, ...]:
    """`_levels` by the contract alone, a level at a time."""
    out = []
    for level in raw:
        # Binance's levels are [price, quantity] (older answers added an ignored third item)
        if not isinstance(level, list) or not 2 <= len(level) <= 3:
            raise BadData("bad_depth", f"{name}: level {short_repr(level)}")
        price, qty = level[0], level[1]
        if not (isinstance(price, str) and PRICE.fullmatch(price)) or not (
            isinstance(qty, str) and QUANTITY.fullmatch(qty)
        ):
            raise BadData("bad_depth", f"{name}: level {short_repr(level)}")
        if is_zero(price):
            raise BadData("bad_depth", f"{name}: a level at price 0")
        out.append((price, qty))
    return tuple(out)


class Side:
    """One side of a book: its levels by exact price, and the prices in order. A diff mostly changes the
    quantity of a level the book holds (a dict assignment); only a new or removed level touches the order.

    It also keeps Σ price·qty of the levels from the best to a bound for the bands asked of it (`within`):
    the levels changed since the last call change the sums they are in, and a bound that moved adds or
    takes away only the levels it passed, so a band of thousands of levels costs what changed since the
    last call (each level once, however often it changed), not a sum over all of them."""

    __slots__ = ("bands", "bids", "changed", "levels", "order")

    def __init__(self, bids: bool):
        self.bids = bids  # best = highest price; asks: lowest
        self.levels: dict[Decimal, Level] = {}
        self.order = SortedList()
        self.bands: dict[str, list] = {}  # band name -> [bound, Σ price·qty of the levels within it]
        self.changed: dict[Decimal, Level | None] = {}  # since the sums were last brought up: level -> as it was

    def set(self, levels: Iterable[Level]) -> None:
        book, order, changed = self.levels, self.order, self.changed if self.bands else None
        for price, qty in levels:
            key = Decimal(price)
            old = book.get(key)
            if changed is not None and key not in changed:
                changed[key] = old
            if not qty.strip("0."):  # zero (the contract's decimals): removes the level
                if old is not None:  # removing a level the book does not hold "is normal"
                    del book[key]
                    order.remove(key)
            else:
                if old is None:
                    order.add(key)
                book[key] = (price, qty)

    def _sum(self, lo: Decimal, hi: Decimal, inclusive: tuple[bool, bool]) -> Decimal:
        levels, total = self.levels, ZERO
        for k in self.order.irange(lo, hi, inclusive):
            total = NOTIONAL.add(total, NOTIONAL.multiply(k, Decimal(levels[k][1])))
        return total

    def _bring_up(self) -> None:
        """The levels changed since the last call, into the sums of the bands they are in."""
        levels, bids = self.levels, self.bids
        for key, was in self.changed.items():
            now = levels.get(key)
            if now == was:
                continue
            delta = None
            for band in self.bands.values():
                if (key >= band[0]) if bids else (key <= band[0]):
                    if delta is None:
                        q = NOTIONAL.subtract(Decimal(now[1]) if now else ZERO, Decimal(was[1]) if was else ZERO)
                        delta = NOTIONAL.multiply(key, q)
                    band[1] = NOTIONAL.add(band[1], delta)
        self.changed.clear()

    def within(self, name: str, bound: Decimal) -> Decimal:
        """Σ price·qty of the levels from the best down to `bound` (bids, price ≥ bound) or up to it (asks,
        price ≤ bound), kept for the band `name` between calls."""
        self._bring_up()
        band = self.bands.get(name)
        if band is None:
            lo, hi = (bound, None) if self.bids else (None, bound)
            band = self.bands[name] = [bound, self._sum(lo, hi, (True, True))]  # type: ignore[arg-type]
        old, total = band
        if bound != old:
            if self.bids:  # levels in [min, max) of the two bounds joined (the bound fell) or left the band
                passed = self._sum(min(bound, old), max(bound, old), (True, False))
                total = NOTIONAL.add(total, passed) if bound < old else NOTIONAL.subtract(total, passed)
            else:  # asks: levels in (min, max]
                passed = self._sum(min(bound, old), max(bound, old), (False, True))
                total = NOTIONAL.add(total, passed) if bound > old else NOTIONAL.subtract(total, passed)
            band[0], band[1] = bound, total
        return total

    def __len__(self) -> int:
        return len(self.levels)

    def best(self) -> Level | None:
        if not self.order:
            return None
        return self.levels[self.order[-1] if self.bids else self.order[0]]

    def best_price(self) -> Decimal | None:
        if not self.order:
            return None
        return self.order[-1] if self.bids else self.order[0]

    def deepest_price(self) -> Decimal | None:
        if not self.order:
            return None
        return self.order[0] if self.bids else self.order[-1]

    def top(self, n: int | None = None) -> list[Level]:
        """The best n levels (all of them for None), best first."""
        order = self.order
        if self.bids:
            keys = reversed(order) if n is None else reversed(order[-n:] if n < len(order) else order)
        else:
            keys = iter(order) if n is None else iter(order[:n])
        return [self.levels[k] for k in keys]


class OrderBook:
    """Both sides of one symbol's book as of `last_update_id`; best levels first."""

    __slots__ = ("asks", "bids", "known_ask", "known_bid", "last_event_ms", "last_update_id", "symbol")

    def __init__(self, snapshot: DepthSnapshot):
        self.symbol = snapshot.symbol
        self.last_update_id = snapshot.last_update_id
        self.last_event_ms: int | None = None  # E of the last diff applied (None: the snapshot as it came)
        self.bids = Side(bids=True)
        self.asks = Side(bids=False)
        self.bids.set(snapshot.bids)
        self.asks.set(snapshot.asks)
        # how deep the snapshot went: beyond it a level is known only once it changed; a side shorter than
        # the levels asked for is the whole side (a thin book)
        asked = snapshot.limit or 0  # not known: no side is known whole
        self.known_bid = ZERO if len(snapshot.bids) < asked else self.bids.deepest_price()
        self.known_ask = BEYOND if len(snapshot.asks) < asked else self.asks.deepest_price()

    def apply(self, diff: DepthDiff) -> None:
        self.bids.set(diff.bids)
        self.asks.set(diff.asks)
        self.last_update_id = diff.final_id
        self.last_event_ms = diff.event_ms

    def levels(self) -> tuple[list[Level], list[Level]]:
        """Every level of each side, best first."""
        return self.bids.top(), self.asks.top()

    @classmethod
    def restored(cls, snapshot: DepthSnapshot, last_event_ms: int | None, known_bid: str | None,
                 known_ask: str | None) -> OrderBook:  # fmt: skip
        """A book as it was checkpointed (its levels as a snapshot, and how deep the original one went)."""
        book = cls(snapshot)
        book.last_event_ms = last_event_ms
        book.known_bid = Decimal(known_bid) if known_bid is not None else None
        book.known_ask = Decimal(known_ask) if known_ask is not None else None
        return book

    def best_bid(self) -> Level | None:
        return self.bids.best()

    def best_ask(self) -> Level | None:
        return self.asks.best()

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """The best n levels of each side, best first."""
        return self.bids.top(n), self.asks.top(n)

    def crossed(self) -> bool:
        bid, ask = self.bids.best_price(), self.asks.best_price()
        return bid is not None and ask is not None and bid >= ask


class Step(Enum):
    """What a diff or a snapshot did to a symbol's book, and so what the caller does next."""

    BUFFERED = "buffered"  # no book yet: kept for when a snapshot comes (fetch one if none is asked for)
    APPLIED = "applied"
    IGNORED = "ignored"  # older than the book (u below its id): already in it
    GAP = "gap"  # U above the book's id + 1: something was lost; the book is stale, a new snapshot needed
    SYNCED = "synced"  # a snapshot and the buffered diffs after it make the book
    SNAPSHOT_TOO_OLD = "snapshot_too_old"  # lastUpdateId below the first buffered U: fetch another
    SNAPSHOT_EARLY = "snapshot_early"  # no diff buffered yet to bridge it: kept until the diffs come


class DepthSync:
    """One symbol's book kept by Binance's procedure (module docstring). Feed it the symbol's diffs in the
    order they came and the snapshots fetched for it; read `book` (None before the first sync), `synced`
    and the counters."""

    def __init__(self, symbol: str, max_buffered: int = limits.DEPTH_BUFFER_MAX):
        self.symbol = symbol
        self.book: OrderBook | None = None
        self.synced = False
        self.buffer: deque[Packed] = deque(maxlen=max_buffered)
        self._early: DepthSnapshot | None = None
        self.resyncs = 0  # gaps and forced resyncs after a first sync
        self.applied = 0

    @property
    def stale(self) -> bool:
        """A book is readable but not being kept: its last good state, until the next sync."""
        return self.book is not None and not self.synced

    def restore(self, book: OrderBook) -> None:
        """Continue a checkpointed book: synced at its id, the diffs it holds ignored when they come again."""
        self.book, self.synced = book, True
        self.buffer.clear()

    def first_buffered_id(self) -> int | None:
        return self.buffer[0].first_id if self.buffer else None

    def on_diff(self, diff: DepthDiff) -> Step:
        if not self.synced:
            self.buffer.append(Packed.of(diff))
            if self._early is not None:  # a snapshot came before any diff: try it now
                early, self._early = self._early, None
                return self.on_snapshot(early)
            return Step.BUFFERED
        return self._update(diff)

    def _update(self, diff: DepthDiff) -> Step:
        book = self.book
        assert book is not None
        if diff.final_id <= book.last_update_id:
            return Step.IGNORED
        if diff.first_id > book.last_update_id + 1:
            self.resync(diff)
            return Step.GAP
        book.apply(diff)
        self.applied += 1
        return Step.APPLIED

    def resync(self, keep: DepthDiff | None = None) -> None:
        """Throw the book's sync away (it stays readable, stale) and buffer again from `keep`."""
        if self.synced:
            self.resyncs += 1
        self.synced = False
        self.buffer.clear()
        if keep is not None:
            self.buffer.append(Packed.of(keep))

    def on_snapshot(self, snapshot: DepthSnapshot) -> Step:
        if self.synced:  # a snapshot nobody needs (asked before the book synced from another): ignored
            return Step.IGNORED
        if not self.buffer:
            self._early = snapshot
            return Step.SNAPSHOT_EARLY
        if snapshot.last_update_id < self.buffer[0].first_id:
            return Step.SNAPSHOT_TOO_OLD
        while self.buffer and self.buffer[0].final_id <= snapshot.last_update_id:
            self.buffer.popleft()
        book = OrderBook(snapshot)
        self.book, self.synced = book, True
        pending, self.buffer = self.buffer, deque(maxlen=self.buffer.maxlen)
        for packed in pending:
            if self._update(packed.unpack(self.symbol)) is Step.GAP:  # lost while buffering: wait again
                self.buffer.extend(d for d in pending if d.first_id > packed.first_id)
                return Step.GAP
        return Step.SYNCED


def levels_equal(a: Sequence[Level], b: Sequence[Level]) -> bool:
    """Two lists of levels equal as decimals (`"1.50"` is `"1.5"`)."""
    return len(a) == len(b) and all(Decimal(p) == Decimal(q) and Decimal(x) == Decimal(y)
                                    for (p, x), (q, y) in zip(a, b, strict=True))  # fmt: skip
