"""Filling gaps in trade and aggTrade ids from the REST API, until they are filled.

A gap (ids the stream skipped: a reconnect, a stall, a lost frame, a restart) waits `grace` seconds for
late frames, then is fetched page by page (`fromId`, 1,000 ids a page) from /api/v3/historicalTrades or
/api/v3/aggTrades, several gaps at a time, all within the process's request-weight budget (see
`rest.py`). A failed page (a cut body, a timeout, a 5xx, a 429) is tried again with backoff, without end:
a gap is given up only when the exchange no longer has those ids, which shows as a page that starts
above the requested `fromId` (Binance keeps trades for a limited time; the ids below the first one it
returns are gone). Those ids are counted and logged with that reason; nothing else is dropped. While gaps
are due, the budget knows (`RestBudget.declare`): depth snapshots then take only their share of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from cryptomon.binance import limits
from cryptomon.binance.schema import AGG_TRADE, Event, agg_trade_from_rest, trade_from_rest
from cryptomon.errors import BadData
from cryptomon.ingestion.rest_client import RateLimited, RestClient, RestError
from cryptomon.ingestion.sequences import SequenceTracker

log = logging.getLogger(__name__)

PAGE = limits.MAX_PAGE
MAX_RETRY_DELAY = 60.0


@dataclass
class BackfillStats:
    """What the backfill did: gaps filled, events fetched, ids given up (and why), failed pages."""

    gaps_filled: int = 0
    backfilled: int = 0
    lost: int = 0  # ids the exchange no longer had
    lost_reasons: list[str] = field(default_factory=list)  # the last few, for /health
    page_failures: int = 0
    bad_rows: int = 0


class Backfiller:
    """Fills the tracker's open gaps over REST, several at a time, until each is filled or gone from the exchange."""

    def __init__(
        self,
        rest: RestClient,
        tracker: SequenceTracker,
        emit: Callable[[Event, int], None],
        dead_letter: Callable[[bytes, str, str, int], None],
        grace: float = 1.0,
        concurrency: int = 4,
    ):
        self.rest = rest
        self.tracker = tracker
        self.emit = emit  # produce a backfilled event (event, ingestion ms)
        self.dead_letter = dead_letter
        self.grace = grace
        self.concurrency = concurrency
        self.stats = BackfillStats()
        self.active: dict[tuple[str, str], asyncio.Task] = {}  # one task per (symbol, kind) at a time

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.2)
                self._start_due()
        finally:
            self.rest.budget.declare(0)
            for task in self.active.values():
                task.cancel()
            await asyncio.gather(*self.active.values(), return_exceptions=True)

    def _start_due(self) -> None:
        for key in [k for k, t in self.active.items() if t.done()]:
            self.active.pop(key).result()  # a bug in a fill is raised here, not lost
        due = self.tracker.pending(older_than=time.monotonic() - self.grace)
        self.rest.budget.declare(len(due))
        for key, start, end in due:
            if len(self.active) >= self.concurrency:
                return
            if key not in self.active:
                self.active[key] = asyncio.get_running_loop().create_task(self.fill(key, start, end))

    async def fill(self, key: tuple[str, str], start: int, end: int) -> None:
        """Fetch ids start..end of one (symbol, kind) until they are in, or the exchange has lost them."""
        symbol, kind = key
        path, convert, id_field = (
            ("/api/v3/aggTrades", agg_trade_from_rest, "a")
            if kind == AGG_TRADE
            else ("/api/v3/historicalTrades", trade_from_rest, "id")
        )
        log.info("backfilling %s %s ids %d..%d", symbol, kind, start, end)
        from_id, failures, filled = start, 0, 0
        while from_id <= end:
            try:
                rows = await self.rest.get(path, {"symbol": symbol, "fromId": from_id, "limit": PAGE})
                if not isinstance(rows, list):
                    raise RestError(200, f"{path}: expected a list, got {type(rows).__name__}")
            except RateLimited:
                continue  # the client holds every request until Retry-After has passed
            except (TimeoutError, RestError, aiohttp.ClientError) as exc:
                failures += 1
                self.stats.page_failures += 1
                delay = min(MAX_RETRY_DELAY, 0.5 * 2 ** min(failures, 8))
                log.warning("backfill %s %s from %d failed (%r): retry %d in %.1fs", symbol, kind, from_id, exc,
                            failures, delay)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            if not rows:  # not (yet) on the exchange: the gap stays open and is tried again later
                log.info("backfill %s %s: nothing from id %d yet; the gap stays open", symbol, kind, from_id)
                await asyncio.sleep(min(MAX_RETRY_DELAY, 1.0 + failures))
                failures += 1
                continue
            failures = 0
            first = rows[0].get(id_field) if isinstance(rows[0], dict) else None
            if isinstance(first, int) and first > from_id:
                self._lost(key, from_id, min(first - 1, end), f"the exchange's oldest {kind} id is now {first}")
            ingestion_ms = time.time_ns() // 1_000_000
            last_id = from_id
            for row in rows:
                try:
                    ev = convert(symbol, row)
                except (BadData, KeyError, TypeError) as exc:
                    self.stats.bad_rows += 1
                    self.dead_letter(orjson.dumps(row), "bad_rest_row", repr(exc), ingestion_ms)
                    continue
                last_id = ev.seq
                if ev.seq > end:
                    break
                if self.tracker.fill(key, ev.seq):
                    self.emit(ev, ingestion_ms)
                    self.stats.backfilled += 1
                    filled += 1
            # ids the page skipped (it covered them, they were not in it) are not on the exchange
            self._lost(key, from_id, min(last_id, end), f"the exchange's {kind} pages skip them")
            from_id = max(from_id + 1, last_id + 1)
        if filled:
            self.stats.gaps_filled += 1

    def _lost(self, key: tuple[str, str], start: int, end: int, why: str) -> None:
        lost = self.tracker.drop_gap(key, start, end)
        if lost:
            reason = f"{key[0]} {key[1]} ids {start}..{end}: {why}"
            self.stats.lost += lost
            self.stats.lost_reasons = [*self.stats.lost_reasons[-9:], reason]
            log.error("%d ids cannot be backfilled, %s", lost, reason)


async def cancel(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
