"""The simulator against real sockets: Binance's WebSocket protocol and limits, its REST payloads and
limits, the depth stream's consistency with the REST snapshot, and bounded history. No Kafka needed."""

from __future__ import annotations

import asyncio
import itertools
import time
from decimal import Decimal

import aiohttp
import orjson
import pytest

from cryptomon.simulator.engine import Simulator, serve
from cryptomon.simulator.instruments import whole_market
from cryptomon.simulator.ws_protocol import SimLimits
from tests.helpers import free_port, shaped

pytestmark = pytest.mark.integration


def run(sim: Simulator, scenario, timeout: float = 60.0):
    """Serve `sim` on a free port for the coroutine scenario(session, base) and return its result."""

    async def main():
        port = free_port()
        runner = await serve(sim, "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as session:
                return await asyncio.wait_for(scenario(session, f"127.0.0.1:{port}"), timeout)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def sim(**kw) -> Simulator:
    kw.setdefault("rate", 200.0)
    return Simulator(kw.pop("symbols", ("BTCUSDT", "ETHUSDT", "PEPEUSDT")), wait_for_client=False, **kw)


async def frames_until(ws, predicate, within: float = 10.0) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + within
    while not out or not predicate(out):
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"connection ended: {msg.type} {msg.data} {msg.extra}")
        out.append(orjson.loads(msg.data))
    return out


# ---------------------------------------------------------------- WebSocket protocol


def test_live_subscribe_list_properties_and_errors_on_bare_ws():
    async def scenario(session, base):
        async with session.ws_connect(f"ws://{base}/ws") as ws:
            await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@bookTicker"],
                                            "id": 1}).decode())  # fmt: skip
            got = await frames_until(ws, lambda fs: len(fs) > 5)
            assert got[0] == {"result": None, "id": 1}
            assert {f.get("e", "bookTicker") for f in got[1:]} <= {"trade", "bookTicker"}
            assert all("stream" not in f for f in got[1:])  # /ws: raw payloads
            for req in (
                {"method": "LIST_SUBSCRIPTIONS", "id": "a-string-id"},
                {"method": "SET_PROPERTY", "params": ["combined", True], "id": 3},
                {"method": "GET_PROPERTY", "params": ["combined"], "id": 4},
            ):
                await ws.send_str(orjson.dumps(req).decode())
            replies = [f for f in await frames_until(ws, lambda fs: sum("id" in f for f in fs) == 3) if "id" in f]
            assert replies == [
                {"result": ["btcusdt@bookTicker", "btcusdt@trade"], "id": "a-string-id"},
                {"result": None, "id": 3},
                {"result": True, "id": 4},
            ]
            more = await frames_until(ws, lambda fs: any("stream" in f for f in fs))
            assert next(f for f in more if "stream" in f)["stream"].startswith("btcusdt@")  # combined now
            await asyncio.sleep(1.1)  # the message limit is per second
            for bad in ("{not json", '{"method": "NOPE", "id": 5}', '{"method": "SUBSCRIBE", "id": -1}'):
                await ws.send_str(bad)
            await asyncio.sleep(1.1)
            await ws.send_str('{"method": "UNSUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@bookTicker"], "id": 6}')
            errors = [f for f in await frames_until(ws, lambda fs: any(f.get("id") == 6 for f in fs)) if "id" in f]
            assert [(e.get("error") or {}).get("code") for e in errors] == [3, 2, 2, None]
            assert errors[1] == {"error": {"code": 2, "msg": errors[1]["error"]["msg"]}, "id": 5}
            assert "unknown variant NOPE" in errors[1]["error"]["msg"]

    run(sim(), scenario)


def test_1025_streams_are_refused_and_1024_accepted():
    async def scenario(session, base):
        names = [f"s{i}usdt@trade" for i in range(1025)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"ws://{base}/stream?streams={'/'.join(names)}")
        assert refused.value.status == 400
        async with session.ws_connect(f"ws://{base}/stream?streams={'/'.join(names[:1024])}") as ws:
            await ws.send_str('{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}')
            reply = (await frames_until(ws, lambda fs: any(f.get("id") == 7 for f in fs)))[-1]
            assert reply["error"]["code"] == 2 and "1025" in reply["error"]["msg"]
            await ws.send_str('{"method": "LIST_SUBSCRIPTIONS", "id": 8}')
            listed = (await frames_until(ws, lambda fs: any(f.get("id") == 8 for f in fs)))[-1]
            assert len(listed["result"]) == 1024
        return (await (await session.get(f"http://{base}/sim/stats")).json())["refused"]

    assert run(sim(), scenario)["streams"] == 2


def test_a_sixth_message_within_a_second_closes_the_connection():
    async def scenario(session, base):
        async with session.ws_connect(f"ws://{base}/ws") as ws:
            for i in range(5):
                await ws.send_str(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
            assert len(await frames_until(ws, lambda fs: len(fs) == 5)) == 5
            await ws.send_str('{"method": "LIST_SUBSCRIPTIONS", "id": 5}')
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
        async with session.ws_connect(f"ws://{base}/ws") as ws:  # 4 a second is fine, forever
            for i in range(12):
                await ws.send_str(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
                await asyncio.sleep(0.26)
            assert len(await frames_until(ws, lambda fs: len(fs) == 12)) == 12

    run(sim(), scenario)


def test_new_connections_per_ip_are_limited():
    async def scenario(session, base):
        for _ in range(3):
            async with session.ws_connect(f"ws://{base}/ws"):
                pass
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"ws://{base}/ws")
        assert refused.value.status == 429

    run(sim(limits=SimLimits(max_connections=3, connection_window=300)), scenario)


def test_connections_are_cut_at_max_age_and_a_client_that_never_pongs_is_dropped():
    async def scenario(session, base):
        async with session.ws_connect(f"ws://{base}/stream?streams=btcusdt@trade", autoping=True) as ws:
            started = time.monotonic()
            while (msg := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                pass
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000
            assert 1.5 <= time.monotonic() - started < 4  # max_age 2 s; pings answered meanwhile
        async with session.ws_connect(f"ws://{base}/ws", autoping=False) as ws:
            pings = 0
            while (msg := await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.TEXT):
                pings += msg.type == aiohttp.WSMsgType.PING
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008 and pings >= 1
        return (await (await session.get(f"http://{base}/sim/stats")).json())["refused"]

    refused = run(sim(limits=SimLimits(max_age=2.0, ping_interval=0.3, pong_timeout=1.0)), scenario)
    assert refused["max_age"] == 1 and refused["pong_timeout"] == 1


# ---------------------------------------------------------------- REST


def test_weight_exhaustion_is_429_with_retry_after_and_a_call_inside_it_is_418():
    async def scenario(session, base):
        used = []
        for _ in range(4):  # 4 x 25 = the whole budget
            r = await session.get(f"http://{base}/api/v3/historicalTrades", params={"symbol": "BTCUSDT"})
            assert r.status == 200
            used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
        assert used == [25, 50, 75, 100]
        limited = await session.get(f"http://{base}/api/v3/aggTrades", params={"symbol": "BTCUSDT"})
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        assert (await limited.json())["code"] == -1003
        await asyncio.sleep(0.3)  # past the grace for requests already in flight when the 429 went out
        banned = await session.get(f"http://{base}/api/v3/ping")
        assert banned.status == 418 and int(banned.headers["Retry-After"]) == 30
        assert (await session.get(f"http://{base}/api/v3/time")).status == 418
        return (await (await session.get(f"http://{base}/sim/stats")).json())["rest"]

    rest = run(sim(limits=SimLimits(weight_limit=100, weight_window=1e6, ban_seconds=30.0)), scenario)  # one window
    assert (rest["429"], rest["418"]) == (1, 2)


def test_rest_payloads_have_binances_fields_and_agree_with_each_other():
    s = sim(instruments=whole_market(30), symbols=tuple(whole_market(30)), rate=400.0)

    async def scenario(session, base):
        async def get(path, **params):
            r = await session.get(f"http://{base}/api/v3/{path}", params=params)
            assert r.status == 200, await r.text()
            return await r.json()

        await asyncio.sleep(2.0)  # let the market trade
        info = await get("exchangeInfo")
        assert {"timezone", "serverTime", "rateLimits", "exchangeFilters", "symbols"} <= set(info)
        assert info["rateLimits"][0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                         "limit": 6000}  # fmt: skip
        statuses = [x["status"] for x in info["symbols"]]
        assert statuses.count("TRADING") == 30 and statuses.count("BREAK") == 4
        pepe = (await get("exchangeInfo", symbols='["PEPEUSDT"]'))["symbols"][0]
        assert [f["filterType"] for f in pepe["filters"]][:2] == ["PRICE_FILTER", "LOT_SIZE"]
        lot = pepe["filters"][1]
        assert Decimal(lot["maxQty"]) >= Decimal("92141578954")  # PEPEUSDT's real LOT_SIZE range fits
        for sym in ("BTCUSDT", "PEPEUSDT"):
            for _ in range(50):  # the market moves between two requests: compare when the book stood still
                depth = await get("depth", symbol=sym, limit=5)
                book = await get("ticker/bookTicker", symbol=sym)
                if (await get("depth", symbol=sym, limit=5))["lastUpdateId"] == depth["lastUpdateId"]:
                    break
            else:
                raise AssertionError(f"{sym}'s book changed between every two depth requests")
            assert shaped(book, "bookTicker")
            assert [book["bidPrice"], book["bidQty"]] == depth["bids"][0]
            assert [book["askPrice"], book["askQty"]] == depth["asks"][0]
            assert len(depth["bids"]) == len(depth["asks"]) == 5 and isinstance(depth["lastUpdateId"], int)
            trades_in = lambda klines: sum(k[8] for k in klines)  # noqa: E731
            before = trades_in(await get("klines", symbol=sym, interval="1m"))
            ticker = await get("ticker/24hr", symbol=sym)
            assert shaped(ticker, "ticker24hr") and len(ticker) == 21
            price = (await get("ticker/price", symbol=sym))["price"]
            trades = await get("historicalTrades", symbol=sym, limit=1000)
            assert trades and all(shaped(t, "trade") for t in trades)
            assert price in {t["price"] for t in trades}  # the market trades on between two requests
            aggs = await get("aggTrades", symbol=sym, fromId=(await get("aggTrades", symbol=sym, limit=1))[0]["a"])
            assert all(shaped(a, "aggTrade") for a in aggs)
            window = await get("aggTrades", symbol=sym, startTime=aggs[0]["T"], endTime=aggs[-1]["T"])
            assert window[0]["a"] <= aggs[0]["a"] and window[-1]["a"] >= aggs[-1]["a"]
            klines = await get("klines", symbol=sym, interval="1m")
            assert klines and all(len(k) == 12 for k in klines)
            assert before <= ticker["count"] <= trades_in(klines)  # the 24 h count is the klines' trades
            assert shaped(await get("avgPrice", symbol=sym), "avgPrice")
        everything = await get("ticker/bookTicker")
        assert len(everything) == 34
        errors = []
        for path, params in (("depth", {}), ("depth", {"symbol": "NOPEUSDT"}), ("klines", {"symbol": "BTCUSDT",
                             "interval": "7m"}), ("ticker/price", {"symbol": "BTCUSDT", "symbols": '["BTCUSDT"]'}),
                             ("does/not/exist", {})):  # fmt: skip
            r = await session.get(f"http://{base}/api/v3/{path}", params=params)
            errors.append((r.status, (await r.json())["code"]))
        assert errors == [(400, -1102), (400, -1121), (400, -1120), (400, -1128), (404, -1000)]

    run(s, scenario)


def test_depth_stream_applied_to_a_snapshot_keeps_the_book():
    async def scenario(session, base):
        async with session.ws_connect(f"ws://{base}/ws/btcusdt@depth@100ms") as ws:
            await frames_until(ws, lambda fs: True)  # the first diff: the stream runs
            snap = await (await session.get(f"http://{base}/api/v3/depth", params={"symbol": "BTCUSDT",
                                                                                  "limit": 20})).json()  # fmt: skip
            bids = {p: q for p, q in snap["bids"]}
            asks = {p: q for p, q in snap["asks"]}
            last = snap["lastUpdateId"]
            events = await frames_until(ws, lambda fs: len(fs) >= 8)
            for ev in events:
                if ev["u"] <= last:
                    continue
                for side, book in (("b", bids), ("a", asks)):
                    for p, q in ev[side]:
                        if Decimal(q) == 0:
                            book.pop(p, None)
                        else:
                            book[p] = q
                last = ev["u"]
            now = await (await session.get(f"http://{base}/api/v3/depth", params={"symbol": "BTCUSDT",
                                                                                 "limit": 20})).json()  # fmt: skip
        top = lambda book, rev: sorted(book.items(), key=lambda x: Decimal(x[0]), reverse=rev)[:5]  # noqa: E731
        if now["lastUpdateId"] == last:
            assert top(bids, True) == [tuple(x) for x in now["bids"][:5]]
            assert top(asks, False) == [tuple(x) for x in now["asks"][:5]]
        return last > snap["lastUpdateId"]

    assert run(sim(symbols=("BTCUSDT",), rate=50.0), scenario)


def test_depth_diffs_go_on_while_nobody_listens_so_a_reconnect_misses_them():
    """As on Binance: the diff stream is the exchange's, not the connection's. The first diff on a new
    connection starts after the ones sent while the client was away, so its book must resync."""

    simulator = sim(symbols=("BTCUSDT",), rate=50.0)

    async def scenario(session, base):
        async with session.ws_connect(f"ws://{base}/ws/btcusdt@depth@100ms") as ws:
            before = await frames_until(ws, lambda fs: len(fs) >= 3)
        assert all(b["U"] == a["u"] + 1 for a, b in itertools.pairwise(before))  # consecutive
        while "btcusdt@depth@100ms" in simulator.subscribers:  # noqa: ASYNC110 - the server's state, no event
            await asyncio.sleep(0.02)
        gone_at = simulator._depth_sent["BTCUSDT"]  # the last diff anyone can have received
        while simulator._depth_sent["BTCUSDT"] == gone_at:  # noqa: ASYNC110 - a diff goes out to nobody
            await asyncio.sleep(0.02)
        async with session.ws_connect(f"ws://{base}/ws/btcusdt@depth@100ms") as ws:
            (after,) = await frames_until(ws, lambda fs: True)
        return gone_at, after["U"]

    last_u, first_u = run(simulator, scenario, timeout=20.0)
    assert first_u > last_u + 1, (last_u, first_u)


def test_history_is_a_bounded_ring():
    s = sim(symbols=("BTCUSDT",), rate=2000.0, history=1000)

    async def scenario(session, base):
        ring = s.market.state["BTCUSDT"].trades
        while ring.next - ring.first < 1000:  # noqa: ASYNC110 - waits on the market, which sets no event
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # and well past it
        st = s.market.state["BTCUSDT"]
        oldest = st.trades.first
        r = await session.get(f"http://{base}/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "fromId": 1,
                                                                               "limit": 1000})  # fmt: skip
        rows = await r.json()
        assert rows[0]["id"] >= oldest > 1_000_000  # what the ring no longer has is not served
        assert [x["id"] for x in rows] == list(range(rows[0]["id"], rows[0]["id"] + len(rows)))
        return st.trades.capacity, len(st.trades.cols[0])

    assert run(s, scenario) == (1000, 1000)
