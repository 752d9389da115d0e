"""The ingestion's side of the order book. It keeps no book: the diffs go to `binance.depth` as Binance
sent them and the book stage rebuilds every book from that topic. The ingestion only follows where each
symbol's diff stream stands, to know when a book needs a snapshot (the symbol's first diff, or a diff
whose `U` does not follow the last `u`: a diff was lost, e.g. in a reconnect) and whether a snapshot it
fetched can bridge the diffs sent since (Binance's rule: `lastUpdateId` at or above the first `U`
buffered, else fetch another). A snapshot that can goes into the same topic, keyed by the symbol, after
the diffs already sent: any reader of the topic syncs the same book at the same place.

Snapshots are paced by the process's one REST budget (shared with the backfill), at the weight Binance
charges for the depth asked (`limits.depth_weight`), so 400 symbols starting at once are fetched within
the budget, never in a burst of 429s. They are deferrable: while the backfill has gaps to fill they get
only a share of the budget (see rest_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

import aiohttp
import orjson

from cryptomon.binance import limits
from cryptomon.binance.orderbook import DepthSnapshot
from cryptomon.errors import BadData
from cryptomon.ingestion.rest_client import RateLimited, RestClient, RestError

log = logging.getLogger(__name__)

FORWARD, DUPLICATE = "forward", "duplicate"
USE, TOO_OLD, UNNEEDED = "use", "too_old", "unneeded"


class DepthFeed:
    """Per symbol: the last `u` forwarded, and, while it needs a snapshot, the first `U` since (pure)."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.need: dict[str, int] = {}  # symbol -> first U since its book needs a snapshot, oldest need first
        self.gaps = 0  # diffs whose U did not follow the last u: books resynced
        self.duplicates = 0

    def observe(self, symbol: str, first_id: int, final_id: int) -> str:
        last = self.last.get(symbol)
        if last is not None and final_id <= last:
            self.duplicates += 1
            return DUPLICATE  # sent already (a replay of the connection, a repeat): the topic has it
        if last is None or first_id > last + 1:
            if last is not None:
                self.gaps += 1
                log.warning("%s: depth diff %d..%d after %d: lost diffs, the book resyncs", symbol, first_id,
                            final_id, last)  # fmt: skip
            self.need.pop(symbol, None)  # a gap while waiting: the snapshot must reach the diffs after it
            self.need[symbol] = first_id
        self.last[symbol] = final_id
        return FORWARD

    def verdict(self, symbol: str, last_update_id: int) -> str:
        """What a snapshot fetched for `symbol` is worth now."""
        first = self.need.get(symbol)
        if first is None:
            return UNNEEDED
        if last_update_id < first:
            return TOO_OLD
        del self.need[symbol]
        return USE

    def refresh(self, symbol: str) -> bool:
        """Ask for a new snapshot of a book that has none waiting: one newer than the last diff sent (so that
        a book stage reading from here on meets one); False when it is waiting already or has no diff yet."""
        if symbol in self.need or symbol not in self.last:
            return False
        self.need[symbol] = self.last[symbol] + 1
        return True

    def forget(self, symbols: Iterable[str]) -> None:
        """Symbols no longer followed."""
        for s in symbols:
            self.last.pop(s, None)
            self.need.pop(s, None)


class SnapshotFetcher:
    """Fetches the snapshot of each symbol that needs one, oldest need first, and hands those that bridge
    their diffs to `produce`; counts what it spent."""

    def __init__(
        self,
        feed: DepthFeed,
        rest: RestClient,
        limit: int,
        produce: Callable[[DepthSnapshot, dict], None],
        dead_letter: Callable[[bytes, str, str, int], None],
        retry_seconds: float = 1.0,
    ):
        self.feed, self.rest, self.limit = feed, rest, limit
        self.produce, self.dead_letter = produce, dead_letter
        self.retry_seconds = retry_seconds
        self.wake = asyncio.Event()
        self.fetched = 0
        self.used = 0  # snapshots that bridged their diffs and went to the topic
        self.too_old = 0
        self.failures = 0
        self.weight_spent = 0
        self.weight_by_symbol: Counter[str] = Counter()
        self.refreshes = 0  # periodic new snapshots asked (resync_loop)
        # symbol -> (the id of its last snapshot too old, when it may be fetched again): a quiet book's
        # snapshot stays too old until its next diff, and fetching it again at once would spend the budget
        self.stale: dict[str, tuple[int, float]] = {}

    async def run(self) -> None:
        while True:
            symbol = self.next_symbol(time.monotonic())
            if symbol is None:
                self.wake.clear()
                if self.feed.need:  # all waiting on a newer diff or their retry time: look again soon
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), max(self.retry_seconds, 0.1))
                else:
                    await self.wake.wait()
                continue
            await self.fetch(symbol)

    def next_symbol(self, now: float) -> str | None:
        """The oldest need worth a fetch now: a symbol whose last snapshot was too old waits for a diff
        past that snapshot (before it, the book has not moved and Binance would answer the same) and for
        `retry_seconds` after it (a snapshot can lag the stream)."""
        for symbol in self.feed.need:
            stale = self.stale.get(symbol)
            if stale is None:
                return symbol
            seen, not_before = stale
            if self.feed.last.get(symbol, seen) > seen and now >= not_before:
                return symbol
        if not self.feed.need:
            self.stale.clear()  # of symbols synced since, or no longer followed
        return None

    async def resync_loop(self, every_seconds: float) -> None:
        """Each book a new snapshot every `every_seconds`, one book at a time, spread over the interval."""
        turn = 0
        while True:
            symbols = sorted(self.feed.last)
            await asyncio.sleep(every_seconds / max(1, len(symbols)))
            if symbols:
                turn = (turn + 1) % len(symbols)
                if self.request(symbols[turn]):
                    self.refreshes += 1

    def request(self, symbol: str) -> bool:
        """A new snapshot of `symbol`, newer than its last diff sent (False: one is on its way already)."""
        if not self.feed.refresh(symbol):
            return False
        self.wake.set()
        return True

    async def fetch(self, symbol: str) -> None:
        """One attempt for `symbol`; a failure waits and leaves the need in place (it is tried again)."""
        weight = limits.depth_weight(self.limit)
        try:
            params = {"symbol": symbol, "limit": self.limit}
            body = await self.rest.get("/api/v3/depth", params, weight=weight, deferrable=True)
        except RateLimited as exc:  # the budget holds every request until Retry-After: just wait it out
            self.failures += 1
            await asyncio.sleep(min(exc.retry_after, 5.0))
            return
        except (RestError, aiohttp.ClientError, TimeoutError) as exc:
            self.failures += 1
            log.warning("depth snapshot of %s failed (%s): again in %.0fs", symbol, exc, self.retry_seconds)
            self._requeue(symbol)
            await asyncio.sleep(self.retry_seconds)
            return
        finally:
            self.weight_spent += weight
            self.weight_by_symbol[symbol] += weight
        self.fetched += 1
        try:
            snapshot = DepthSnapshot.from_rest(symbol, body)
        except BadData as bad:
            self.failures += 1
            self.dead_letter(orjson.dumps(body), bad.reason, f"{symbol}: {bad.detail}", time.time_ns() // 1_000_000)
            self._requeue(symbol)
            await asyncio.sleep(self.retry_seconds)
            return
        verdict = self.feed.verdict(symbol, snapshot.last_update_id)
        self.stale.pop(symbol, None)
        if verdict == USE:
            self.used += 1
            self.produce(snapshot, body)
        elif verdict == TOO_OLD:  # Binance's step 3: below the first buffered U, get another
            self.too_old += 1
            self.stale[symbol] = (snapshot.last_update_id, time.monotonic() + self.retry_seconds)
            self._requeue(symbol)

    def _requeue(self, symbol: str) -> None:
        """Behind the other symbols waiting, so that one failing symbol does not hold the rest back."""
        if symbol in self.feed.need:
            self.feed.need[symbol] = self.feed.need.pop(symbol)

    def health(self) -> dict:
        return {
            "waiting": len(self.feed.need),
            "fetched": self.fetched,
            "used": self.used,
            "too_old": self.too_old,
            "failures": self.failures,
            "weight_spent": self.weight_spent,
            "gaps": self.feed.gaps,
            "refreshes": self.refreshes,
            "waiting_symbols": sorted(self.feed.need),  # books resyncing: no snapshot bridged their diffs yet
            "weight_by_symbol": dict(sorted(self.weight_by_symbol.items())),
        }
