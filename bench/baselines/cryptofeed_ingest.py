"""The ingestion benchmark's peer: cryptofeed's Binance feed (TRADES + TICKER) with cryptofeed's own Kafka
backend, as a user of cryptofeed would run it, pointed at the simulator.

Nothing of cryptofeed is edited: a subclass of its Binance feed changes the two endpoint class attributes,
and the producer options go through its Kafka backend's keyword arguments to aiokafka, set as close to
cryptomon's producer as aiokafka allows (acks=all, idempotence, lz4), except linger: the backend awaits
each message's acknowledgement before it sends the next, so any linger is paid per message (20 ms, as
cryptomon lingers, measured 88 msgs/s): aiokafka's default 0 is its best setting. cryptofeed's own choices
stay: one topic per channel and symbol (`trades-BINANCE-BTC-USDT`), the channel name as the message key,
and each message sent and awaited before the next.

Usage: cryptofeed_ingest.py HOST:PORT BOOTSTRAP SYMBOL... (wss:// and https://: trust the simulator's
certificate through SSL_CERT_FILE and REQUESTS_CA_BUNDLE)"""

from __future__ import annotations

import asyncio
import sys
from typing import ClassVar

from cryptofeed import FeedHandler
from cryptofeed.backends.kafka import TickerKafka, TradeKafka
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import TICKER, TRADES
from cryptofeed.exchanges import Binance

QUOTES = ("USDT", "USDC", "FDUSD", "BTC", "ETH", "BNB")


def cryptofeed_symbol(symbol: str) -> str:
    """BTCUSDT -> BTC-USDT (cryptofeed's normalised names)."""
    quote = next(q for q in QUOTES if symbol.endswith(q) and len(symbol) > len(q))
    return f"{symbol[: -len(quote)]}-{quote}"


def producer_options(bootstrap: str) -> dict:
    return {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": "lz4",
        "linger_ms": 0,
    }


def main() -> None:
    base, bootstrap, symbols = sys.argv[1], sys.argv[2], sys.argv[3:]

    class SimBinance(Binance):  # the same feed, pointed at the simulator
        websocket_endpoints: ClassVar = [WebsocketEndpoint(f"wss://{base}")]
        rest_endpoints: ClassVar = [
            RestEndpoint(
                f"https://{base}",
                routes=Routes(
                    "/api/v3/exchangeInfo",
                    l2book="/api/v3/depth?symbol={}&limit={}",
                    authentication="/api/v3/userDataStream",
                ),
            )
        ]

    fh = FeedHandler(config={"log": {"filename": "cryptofeed.log", "level": "WARNING"}})
    asyncio.set_event_loop(asyncio.new_event_loop())  # FeedHandler installs uvloop's policy, then asks for a loop
    options = producer_options(bootstrap)
    fh.add_feed(
        SimBinance(
            symbols=[cryptofeed_symbol(s) for s in symbols],
            channels=[TRADES, TICKER],
            callbacks={TRADES: TradeKafka(**options), TICKER: TickerKafka(**options)},
        )
    )
    fh.run()


if __name__ == "__main__":
    main()
