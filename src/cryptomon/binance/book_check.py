"""The exact check of a book against Binance's own data: Binance sends a bookTicker on every change of
the best bid or ask (price or quantity), so after the diff that ends at update id `u` a correct book's
best bid and ask equal those of the latest bookTicker whose `u` is at or below that `u`.

The two streams come interleaved in any order (on one connection, but each from its own source), so a
book's top at `u` is held until a bookTicker above `u` has come: then the latest one at or below `u` is
known. A bookTicker lost with its connection (both streams of a symbol come over one) would make an older
one look like the latest, so each record may carry the connection session it came over (the ingestion's
`cryptomon-session` Kafka header): a top is checked only against a bookTicker of its own session. Pure: the caller feeds both
streams and reads the counts and the mismatches.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from decimal import Decimal

from cryptomon.binance.orderbook import Level

HISTORY = 4096  # bookTickers kept for the tops still waiting (BTCUSDT sends ~80 a second)
# a kept bookTicker's four decimals as one string (the contract's decimals hold no "|"): 4,096 for each of the
# whole market's 400 symbols took 727 MiB as tuples of tuples of strings (465 bytes each), 40% of the stage
SEP = "|"
PENDING = 4096  # tops waiting for a later bookTicker; beyond it the oldest are dropped unchecked


@dataclass(frozen=True, slots=True)
class Mismatch:
    update_id: int  # the book's id after the diff
    book: tuple[Level | None, Level | None]  # its best bid and ask
    ticker_id: int  # the bookTicker it was checked against
    ticker: tuple[Level, Level]


def _same(a: Level | None, b: Level) -> bool:
    return a is not None and Decimal(a[0]) == Decimal(b[0]) and Decimal(a[1]) == Decimal(b[1])


class TopOfBookCheck:
    """One symbol's check; `checks` counts the tops compared, `mismatches` those that differed."""

    def __init__(self) -> None:
        self._ids: deque[int] = deque(maxlen=HISTORY)
        self._tops: deque[str] = deque(maxlen=HISTORY)  # "bid|bid qty|ask|ask qty"
        self._sessions: deque[int | None] = deque(maxlen=HISTORY)
        self._pending: deque[tuple[int, Level | None, Level | None, int | None]] = deque(maxlen=PENDING)
        self.checks = 0
        self.mismatches = 0
        self.unchecked = 0  # tops whose bookTicker had left the history (or came before any)

    def on_ticker(self, update_id: int, bid: Level, ask: Level, session: int | None = None) -> list[Mismatch]:
        if self._ids and update_id <= self._ids[-1]:
            return []  # a repeat or an older one: the stream's ids only grow
        self._ids.append(update_id)
        self._tops.append(f"{bid[0]}{SEP}{bid[1]}{SEP}{ask[0]}{SEP}{ask[1]}")
        # the one int object of the connection, not one a record (each record's header makes its own)
        self._sessions.append(self._sessions[-1] if self._sessions and self._sessions[-1] == session else session)
        found = []
        while self._pending and self._pending[0][0] < update_id:
            if (m := self._check(*self._pending.popleft())) is not None:
                found.append(m)
        return found

    def on_book(
        self, update_id: int, bid: Level | None, ask: Level | None, session: int | None = None
    ) -> Mismatch | None:
        """The book's best levels after the diff ending at `update_id` (that came over `session`)."""
        if self._ids and self._ids[-1] > update_id:
            return self._check(update_id, bid, ask, session)
        self._pending.append((update_id, bid, ask, session))
        return None

    @property
    def waiting(self) -> int:
        """Tops not checked yet: no bookTicker above them has come."""
        return len(self._pending)

    def reset(self) -> None:
        """The book resyncs: tops of the old one are not checked."""
        self._pending.clear()

    def _check(self, update_id: int, bid: Level | None, ask: Level | None, session: int | None) -> Mismatch | None:
        i = bisect_right(self._ids, update_id) - 1
        if i < 0 or self._sessions[i] != session:  # gone from the history, or of another connection
            self.unchecked += 1
            return None
        bid_price, bid_qty, ask_price, ask_qty = self._tops[i].split(SEP)
        t_bid, t_ask = (bid_price, bid_qty), (ask_price, ask_qty)
        self.checks += 1
        if _same(bid, t_bid) and _same(ask, t_ask):
            return None
        self.mismatches += 1
        return Mismatch(update_id, (bid, ask), self._ids[i], (t_bid, t_ask))
