"""Binance's spot limits and request weights, as its API documentation states them: the one place both the
ingestion (which must respect them) and the simulator (which enforces them) read them from; the value
ranges every stage checks (`schema.py` applies them).

Sources (Binance spot API docs, developers.binance.com/docs/binance-spot-api-docs):
  web-socket-streams  "A single connection can listen to a maximum of 1024 streams." "WebSocket connections
                      have a limit of 5 incoming messages per second. A message is considered: a PING frame,
                      a PONG frame, a JSON controlled message (e.g. subscribe, unsubscribe)." "There is a
                      limit of 300 connections per attempt every 5 minutes per IP." "A single connection to
                      stream.binance.com is only valid for 24 hours; expect to be disconnected at the 24 hour
                      mark." "The WebSocket server will send a ping frame every 20 seconds. If the WebSocket
                      server does not receive a pong frame back from the connection within a minute the
                      connection will be disconnected."
  rest-api/limits     REQUEST_WEIGHT 6000 per minute per IP (exchangeInfo's rateLimits); every answer carries
                      X-MBX-USED-WEIGHT-1M; above the limit 429 with Retry-After; "Repeatedly violating rate
                      limits and/or failing to back off after receiving 429s will result in an automated IP
                      ban (HTTP status 418)", "from 2 minutes to 3 days".
  rest-api/market-data-endpoints   the weight of each endpoint (WEIGHTS below).
  filters             PRICE_FILTER (minPrice/maxPrice/tickSize), LOT_SIZE (minQty/maxQty/stepSize) per symbol
                      in exchangeInfo; every price and quantity is a decimal string with 8 decimals.
"""

from __future__ import annotations

# ---- values (filters): the ranges cryptomon stores and aggregates exactly. Binance's spot prices run from
# 0.00000001 (tickSize of the cheapest tokens) to maxPrice values of up to 10,000,000, and quantities up to
# LOT_SIZE maxQty 92,233,720,368 (PEPEUSDT: int64 / 1e8) -- issue #14 asks for 1e11. With 8 decimals:
DECIMALS = 8
PRICE_INTEGER_DIGITS = 8  # prices < 100,000,000: DECIMAL(16,8)
QUANTITY_INTEGER_DIGITS = 12  # quantities < 1,000,000,000,000: DECIMAL(20,8), the raw tables' NUMERIC(20,8)

# ---- the rest of the validation contract (schema.py applies it at every door; the README's table lists them)
# Binance opened in July 2017; the bound is the start of that year, so that the API docs' own examples
# (June 2017) pass. Nothing older is a Binance event time or an ingestion time.
FIRST_EVENT_MS = 1_483_228_800_000  # 2017-01-01T00:00:00Z
# an event time may be ahead of its ingestion time (and an ingestion time ahead of its Kafka record's timestamp) by at
# most the clock skew allowed, CRYPTOMON_MAX_CLOCK_SKEW_SECONDS (a replay shifted to now at full speed needs
# the capture's length); anything later is a dead letter, whichever stage reads it
DEFAULT_CLOCK_SKEW_SECONDS = 60
MAX_ID = (1 << 63) - 1  # trade, aggTrade and update ids: 0 .. this (the tables' BIGINT; a first trade may be id 0)
# symbols: Binance's spot symbols are upper-case letters and digits (BTCUSDT, 1000SATSUSDT), at most 20 long
SYMBOL_MAX_LENGTH = 20
# a market-data payload has about ten fields; a frame of one is a few hundred bytes. Unknown fields are
# kept as Binance sent them, so they are bounded: scalars only (no nesting), strings of at most 256 chars
MAX_PAYLOAD_FIELDS = 32
MAX_UNKNOWN_STRING = 256
MAX_MARKET_FRAME_BYTES = 64 * 1024  # a trade/aggTrade/bookTicker frame; larger ones are refused before parsing

# ---- diff depth (web-socket-streams "Diff. Depth Stream", rest-api "Order book"): /api/v3/depth answers at
# most 5,000 levels a side ("Default 100; Valid limits:[1, 5000]"); a diff's levels are bounded by the same
# (a 100 ms diff of BTCUSDT holds a few dozen), and so is a frame of one (~40 bytes a level)
DEPTH_LEVELS_MAX = 5000
MAX_DEPTH_FRAME_BYTES = 2 * DEPTH_LEVELS_MAX * 48 + 4096
DEPTH_SPEEDS = ("100ms", "1000ms")  # <symbol>@depth@100ms, <symbol>@depth (1000 ms)
# diffs kept while a symbol waits for its snapshot: at 10 a second, 10 minutes of them (a snapshot paced
# within the REST weight takes at most that long); beyond it the oldest go and the snapshot check asks again
DEPTH_BUFFER_MAX = 6000

# ---- WebSocket (web-socket-streams)
MAX_STREAMS_PER_CONNECTION = 1024
MAX_INCOMING_MESSAGES_PER_SECOND = 5  # per connection: SUBSCRIBE & co, pings and pongs all count
MAX_CONNECTIONS_PER_5_MINUTES = 300  # new connections per IP
CONNECTION_WINDOW_SECONDS = 300
CONNECTION_MAX_AGE_SECONDS = 24 * 3600
SERVER_PING_INTERVAL_SECONDS = 20
PONG_TIMEOUT_SECONDS = 60

# ---- REST (rest-api/limits)
REQUEST_WEIGHT_PER_MINUTE = 6000
RAW_REQUESTS_PER_5_MINUTES = 61000
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
BAN_MIN_SECONDS = 120  # a 418 lasts 2 minutes the first time, up to 3 days for repeat offenders
BAN_MAX_SECONDS = 3 * 24 * 3600
MAX_PAGE = 1000  # trades, historicalTrades, aggTrades, klines: "Default 500; Maximum: 1000"

# ---- request weights (rest-api/market-data-endpoints and general-endpoints)
WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/trades": 25,
    "/api/v3/historicalTrades": 25,
    "/api/v3/aggTrades": 4,
    "/api/v3/klines": 2,
    "/api/v3/uiKlines": 2,
    "/api/v3/avgPrice": 2,
}


def depth_weight(limit: int) -> int:
    """/api/v3/depth: 1-100 -> 5, 101-500 -> 25, 501-1000 -> 50, 1001-5000 -> 250."""
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def ticker_24hr_weight(symbols: int | None) -> int:
    """/api/v3/ticker/24hr: one symbol 2; 1-20 symbols 2, 21-100 40, more or all (None) 80."""
    if symbols is None:
        return 80
    return 2 if symbols <= 20 else 40 if symbols <= 100 else 80


def ticker_weight(symbols: int | None) -> int:
    """/api/v3/ticker/price and /api/v3/ticker/bookTicker: one symbol 2, several or all 4."""
    return 2 if symbols == 1 else 4


# ---- error codes (errors.md)
ERR_TOO_MANY_REQUESTS = -1003
ERR_ILLEGAL_CHARS = -1100
ERR_BAD_PARAM = -1102  # mandatory parameter missing or empty
ERR_BAD_INTERVAL = -1120
ERR_BAD_SYMBOL = -1121
ERR_BAD_PARAMS_COMBO = -1128
ERR_UNKNOWN = -1000
