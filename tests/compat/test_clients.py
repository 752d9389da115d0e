"""Real Binance clients, unmodified, against the simulator: only base URLs and market-type options differ
from what a user of the live exchange writes. Every payload is checked against Binance's documented
field names and types (tests/helpers.py DOCUMENTED)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from cryptomon.supervisor import replay_args
from tests.helpers import ARTIFACTS, shaped, wait_for

pytestmark = pytest.mark.compat

SYMBOLS = ("BTCUSDT", "PEPEUSDT")


# ---------------------------------------------------------------- the official SDK (binance-connector)


def test_official_sdk_rest(exchange):
    from binance.spot import Spot

    client = Spot(base_url=f"http://{exchange}")
    assert client.ping() == {}
    assert abs(client.time()["serverTime"] - time.time() * 1000) < 5000
    info = client.exchange_info(symbol="PEPEUSDT")
    assert info["symbols"][0]["status"] == "TRADING" and info["rateLimits"]
    assert len(client.exchange_info()["symbols"]) == 24
    for symbol in SYMBOLS:
        depth = client.depth(symbol, limit=10)
        assert shaped(depth, "depth") and len(depth["bids"]) == 10
        assert all(shaped(t, "trade") for t in client.trades(symbol, limit=5))
        assert all(shaped(t, "trade") for t in client.historical_trades(symbol, limit=5))
        assert all(shaped(a, "aggTrade") for a in client.agg_trades(symbol, limit=5))
        klines = client.klines(symbol, "1m", limit=3)
        assert klines and all(len(k) == 12 for k in klines)
        assert shaped(client.avg_price(symbol), "avgPrice")
        assert shaped(client.ticker_24hr(symbol), "ticker24hr")
        assert shaped(client.ticker_price(symbol), "price")
        assert shaped(client.book_ticker(symbol), "bookTicker")
    assert len(client.book_ticker(symbols=list(SYMBOLS))) == 2
    assert len(client.ticker_price()) == 24


def _sdk_collect(make_client, subscribe, want: int) -> list[dict]:
    """Run an SDK WebSocket client (a thread of its own) until `want` market-data frames arrived."""
    frames: list[dict] = []
    done = threading.Event()

    def on_message(_, message):
        frames.append(orjson.loads(message))
        if sum("data" in f or "e" in f or "u" in f for f in frames) >= want:
            done.set()

    client = make_client(on_message)
    try:
        subscribe(client)
        assert done.wait(30), f"only {len(frames)} frames: {frames[:3]}"
    finally:
        client.stop()
    return frames


def test_official_sdk_combined_stream_by_live_subscribe(exchange):
    from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient

    frames = _sdk_collect(
        lambda on_message: SpotWebsocketStreamClient(
            stream_url=f"ws://{exchange}", on_message=on_message, is_combined=True
        ),
        lambda c: (c.trade(symbol="btcusdt"), c.book_ticker(symbol="pepeusdt")),
        20,
    )
    acks = [f for f in frames if "result" in f]
    assert acks and all(a["result"] is None and isinstance(a["id"], int) for a in acks)
    data = [f for f in frames if "stream" in f]
    assert {f["stream"] for f in data} <= {"btcusdt@trade", "pepeusdt@bookTicker"}
    assert all(shaped(f["data"], "streamTrade" if f["stream"].endswith("@trade") else "streamBookTicker")
               for f in data)  # fmt: skip


def test_official_sdk_combined_stream_by_url(exchange):
    from binance.websocket.websocket_client import BinanceWebsocketClient

    frames = _sdk_collect(
        lambda on_message: BinanceWebsocketClient(
            stream_url=f"ws://{exchange}/stream?streams=btcusdt@trade/btcusdt@bookTicker", on_message=on_message
        ),
        lambda c: None,
        20,
    )
    assert {f["stream"] for f in frames} == {"btcusdt@trade", "btcusdt@bookTicker"}


# ---------------------------------------------------------------- ccxt and ccxt.pro


def _ccxt_config(exchange: str) -> dict:
    return {
        "urls": {"api": {"public": f"http://{exchange}/api/v3", "ws": {"spot": f"ws://{exchange}/ws"}}},
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
    }


def test_ccxt_rest(exchange):
    import ccxt

    ex = ccxt.binance(_ccxt_config(exchange))
    markets = ex.load_markets()
    assert len([m for m in markets.values() if m["active"]]) == 20
    pepe = markets["PEPE/USDT"]
    assert pepe["precision"]["price"] == 1e-8 and pepe["limits"]["amount"]["max"] >= 92141578954
    trades = ex.fetch_trades("BTC/USDT", limit=10)
    assert trades and all(t["symbol"] == "BTC/USDT" and t["price"] > 0 and t["amount"] > 0 for t in trades)
    ticker = ex.fetch_ticker("PEPE/USDT")
    assert 0 < ticker["bid"] < ticker["ask"] < 0.001
    book = ex.fetch_order_book("BTC/USDT", limit=5)
    assert len(book["bids"]) == 5 and book["bids"][0][0] < book["asks"][0][0]
    assert book["bids"][0][0] == ex.fetch_bids_asks(["BTC/USDT"])["BTC/USDT"]["bid"] or book["nonce"]
    candles = ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)
    assert candles and all(len(c) == 6 and c[2] >= c[3] for c in candles)


def test_ccxt_pro_watch_trades(exchange):
    import ccxt.pro

    async def main():
        ex = ccxt.pro.binance(_ccxt_config(exchange))
        try:
            seen = []
            while len(seen) < 10:
                seen += await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 20)
            return seen
        finally:
            await ex.close()

    trades = asyncio.run(main())
    ids = [int(t["id"]) for t in trades]
    assert ids == sorted(ids) and all(t["symbol"] == "BTC/USDT" for t in trades)


# ---------------------------------------------------------------- python-binance


def test_python_binance_rest_and_trade_socket(exchange):
    from binance import AsyncClient, BinanceSocketManager, Client
    from binance.base_client import BaseClient

    default = BaseClient.API_URL
    BaseClient.API_URL = f"http://{exchange}/api"  # its base URL, read when a client is made
    try:
        client = Client()
        assert client.get_server_time()["serverTime"] > 0
        assert client.get_symbol_info("PEPEUSDT")["baseAsset"] == "PEPE"
        assert shaped(client.get_order_book(symbol="BTCUSDT", limit=5), "depth")
        assert all(shaped(t, "aggTrade") for t in client.get_aggregate_trades(symbol="BTCUSDT", limit=5))
        assert all(shaped(t, "trade") for t in client.get_historical_trades(symbol="BTCUSDT", limit=5))
        assert shaped(client.get_ticker(symbol="PEPEUSDT"), "ticker24hr")
        assert len(client.get_klines(symbol="BTCUSDT", interval="1m", limit=2)[0]) == 12

        async def socket():
            aclient = await AsyncClient.create()
            try:
                bm = BinanceSocketManager(aclient)
                bm.STREAM_URL = f"ws://{exchange}/"
                async with bm.trade_socket("BTCUSDT") as ts:
                    return [await asyncio.wait_for(ts.recv(), 20) for _ in range(5)]
            finally:
                await aclient.close_connection()

        messages = asyncio.run(socket())
    finally:
        BaseClient.API_URL = default
    assert all(shaped(m, "streamTrade") and m["s"] == "BTCUSDT" for m in messages)


# ---------------------------------------------------------------- cryptofeed (wss:// only)

CRYPTOFEED = """
import asyncio, json, os, sys, threading
from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import TICKER, TRADES
from cryptofeed.exchanges import Binance

base = sys.argv[1]


class SimBinance(Binance):  # the same feed, pointed at the simulator
    websocket_endpoints = [WebsocketEndpoint(f"wss://{base}")]
    rest_endpoints = [RestEndpoint(f"https://{base}", routes=Routes("/api/v3/exchangeInfo",
                      l2book="/api/v3/depth?symbol={}&limit={}", authentication="/api/v3/userDataStream"))]


got = {"trades": [], "tickers": []}


def report(code):
    print(json.dumps(got), flush=True)
    os._exit(code)


async def trade(t, receipt):
    got["trades"].append([t.symbol, t.side, str(t.amount), str(t.price), t.id])
    if len(got["trades"]) >= 10 and len(got["tickers"]) >= 10:
        report(0)


async def ticker(t, receipt):
    got["tickers"].append([t.symbol, str(t.bid), str(t.ask)])


threading.Timer(40, report, (1,)).start()
fh = FeedHandler()  # installs uvloop's policy, then asks it for the current loop: make one
asyncio.set_event_loop(asyncio.new_event_loop())
fh.add_feed(SimBinance(symbols=["BTC-USDT", "PEPE-USDT"], channels=[TRADES, TICKER],
                       callbacks={TRADES: trade, TICKER: ticker}))
fh.run()
"""


def test_cryptofeed_trades_and_ticker_through_its_feed_handler(tls_exchange, tmp_path):
    base, cert = tls_exchange
    script = tmp_path / "cryptofeed_run.py"
    script.write_text(CRYPTOFEED)
    env = {**os.environ, "SSL_CERT_FILE": str(cert), "REQUESTS_CA_BUNDLE": str(cert)}
    proc = subprocess.run([sys.executable, str(script), base], env=env, capture_output=True, text=True, timeout=90,
                          cwd=tmp_path)  # fmt: skip
    Path(ARTIFACTS).mkdir(exist_ok=True)
    (ARTIFACTS / "cryptofeed.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert {s for s, *_ in got["trades"]} <= {"BTC-USDT", "PEPE-USDT"} and len(got["trades"]) >= 10
    assert {s for s, *_ in got["tickers"]} == {"BTC-USDT", "PEPE-USDT"}
    assert all(Decimal(bid) < Decimal(ask) for _, bid, ask in got["tickers"])


# ---------------------------------------------------------------- a recorded feed over wss://


def test_a_recorded_feed_is_replayed_over_wss_with_the_frames_as_recorded(tmp_path):
    """`feed replay --tls-cert/--tls-key` (the ingestion benchmark replays the real captures to cryptofeed,
    which refuses ws://): a client that trusts the certificate gets the recorded frames, byte for byte."""
    import ssl

    import websockets

    from cryptomon.simulator.tls import self_signed
    from tests.helpers import free_port, get_json, running

    cert, key = self_signed(tmp_path / "tls")
    frames = [
        {"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1723161255208 + i, "s": "BTCUSDT", "t": 3735683259 + i,
                                             "p": "61583.22000000", "q": "0.00100000", "T": 1723161255207 + i,
                                             "m": i % 2 == 0, "M": True}}
        for i in range(5)
    ]  # fmt: skip
    capture = tmp_path / "btcusdt_capture"
    capture.write_text("".join(f"{1723161254000000000 + i} {orjson.dumps(f).decode()}\n" for i, f in enumerate(frames)))
    port = free_port()
    args = replay_args([capture], port, "--rate", "0", "--tls-cert", str(cert),
            "--tls-key", str(key))  # fmt: skip
    with running("replay-tls", args, {**os.environ, "PYTHONUNBUFFERED": "1"}):
        context = ssl.create_default_context(cafile=str(cert))
        assert get_json(f"http://127.0.0.1:{port}/api/v3/ping")[0] == 0  # plain http is not served

        async def read() -> list[dict]:
            async with websockets.connect(f"wss://127.0.0.1:{port}/stream?streams=btcusdt@trade", ssl=context) as ws:
                return [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in frames]

        def listening() -> bool:
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 30, what="the replay server")
        assert asyncio.run(read()) == frames


def test_ccxt_unmodified_but_its_hosts_loads_the_markets(exchange):
    """ccxt.binance() as a user points it elsewhere: every api.binance.com, fapi.binance.com and
    dapi.binance.com URL on the simulator, no option changed. Its default load_markets reads the spot,
    USDⓈ-M and COIN-M exchangeInfo; the simulator's futures markets are empty."""
    import ccxt

    urls = {
        key: url.replace("https://api.binance.com", f"http://{exchange}")
        .replace("https://fapi.binance.com", f"http://{exchange}")
        .replace("https://dapi.binance.com", f"http://{exchange}")
        for key, url in ccxt.binance().urls["api"].items()
        if isinstance(url, str)
    }
    ex = ccxt.binance({"urls": {"api": urls}})
    markets = ex.load_markets()
    assert {m["type"] for m in markets.values()} == {"spot"} and len(markets) >= 20
    assert ex.fetch_order_book("BTC/USDT", limit=5)["bids"]
