"""The backfill comes before the depth snapshots in the one REST budget: a real RestClient against a local
HTTP server that logs the order of the requests, a Backfiller with gaps to fill and a SnapshotFetcher with
books to sync, both on one budget. With the snapshots' share at 0 no snapshot goes out before the backfill's
last page; first come, first served (share 1), they are interleaved."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from cryptomon.binance.schema import AGG_TRADE
from cryptomon.ingestion.backfill import Backfiller
from cryptomon.ingestion.depth import DepthFeed, SnapshotFetcher
from cryptomon.ingestion.rest_client import RestBudget, RestClient
from cryptomon.ingestion.sequences import SequenceTracker

GAP_SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
GAP_IDS = 12_000  # 12 pages of 1,000 per symbol
BOOKS = [f"B{i:02d}USDT" for i in range(10)]


def exchange(log: list[str]) -> web.Application:
    async def agg_trades(request: web.Request) -> web.Response:
        first, now_ms = int(request.query["fromId"]), time.time_ns() // 1_000_000
        log.append("page")
        await asyncio.sleep(0.01)  # the exchange takes a moment: the pages overlap with other requests
        rows = [{"a": a, "p": "1.00000000", "q": "1.00000000", "f": a, "l": a, "T": now_ms, "m": False}
                for a in range(first, min(first + 1000, GAP_IDS + 2))]  # fmt: skip
        return web.json_response(rows)

    async def depth(request: web.Request) -> web.Response:
        log.append("snapshot")
        return web.json_response({"lastUpdateId": 100, "bids": [["1.0", "1.0"]], "asks": [["2.0", "1.0"]]})

    app = web.Application()
    app.router.add_get("/api/v3/aggTrades", agg_trades)
    app.router.add_get("/api/v3/depth", depth)
    return app


async def run(share: float) -> tuple[list[str], int]:
    log: list[str] = []
    runner = web.AppRunner(exchange(log))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rest = RestClient(f"http://127.0.0.1:{port}", RestBudget(budget=1_000_000, deferrable_share=share))
    tracker, emitted = SequenceTracker(), []
    for symbol in GAP_SYMBOLS:  # ids 2..GAP_IDS+1 missing
        tracker.observe((symbol, AGG_TRADE), 1)
        tracker.observe((symbol, AGG_TRADE), GAP_IDS + 2)
    feed = DepthFeed()
    for symbol in BOOKS:
        feed.observe(symbol, 90, 95)  # each needs a snapshot
    backfill = Backfiller(rest, tracker, lambda ev, ms: emitted.append(ev.seq), lambda *a: None, grace=0.0)
    fetcher = SnapshotFetcher(feed, rest, 100, lambda snap, body: None, lambda *a: None)
    tasks = [asyncio.create_task(backfill.run())]
    try:
        async with asyncio.timeout(30):
            while rest.budget.urgent == 0:  # noqa: ASYNC110 - the backfill has declared its gaps
                await asyncio.sleep(0.01)
            tasks.append(asyncio.create_task(fetcher.run()))
            while feed.need or tracker.pending():  # noqa: ASYNC110 - both done
                await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rest.close()
        await runner.cleanup()
    return log, len(emitted)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_snapshots_wait_for_the_backfill_only_when_their_share_says_so(share):
    log, emitted = asyncio.run(run(share))
    assert emitted == len(GAP_SYMBOLS) * GAP_IDS  # every missing id once
    assert log.count("snapshot") == len(BOOKS) and log.count("page") == len(GAP_SYMBOLS) * GAP_IDS // 1000
    last_page, first_snapshot = len(log) - 1 - log[::-1].index("page"), log.index("snapshot")
    if share == 0.0:
        assert first_snapshot > last_page, log
    else:
        assert first_snapshot < last_page, log
