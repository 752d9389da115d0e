"""Binance's stream names (`<symbol>@<kind>`, symbol in lower case) and combined-stream URLs
(`<base>/stream?streams=a/b/c`), as the spot WebSocket docs define them."""

from __future__ import annotations

from collections.abc import Iterable

from cryptomon.binance.schema import KINDS


def stream_name(symbol: str, kind: str) -> str:
    """`btcusdt@trade` for ("BTCUSDT", "trade")."""
    return f"{symbol.lower()}@{kind}"


def streams_of(symbol: str, kinds: Iterable[str] = KINDS) -> list[str]:
    """The streams cryptomon follows for one symbol (trade, aggTrade, bookTicker), in that order."""
    return [stream_name(symbol, kind) for kind in kinds]


def stream_names(symbols: Iterable[str], kinds: Iterable[str] = KINDS) -> list[str]:
    kinds = tuple(kinds)
    return [name for symbol in symbols for name in streams_of(symbol, kinds)]


def depth_stream(speed: str) -> str | None:
    """The diff-depth stream kind for CRYPTOMON_DEPTH: `depth@100ms`, `depth` (1000 ms), None when off."""
    return {"100ms": "depth@100ms", "1000ms": "depth"}.get(speed)


def followed_kinds(speed: str) -> tuple[str, ...]:
    """The stream kinds followed per symbol: trade, aggTrade, bookTicker and, unless off, the diff depth."""
    depth = depth_stream(speed)
    return (*KINDS, depth) if depth else KINDS


def split_stream(stream: str) -> tuple[str, str]:
    """("BTCUSDT", "trade") for `btcusdt@trade`; the kind keeps any suffix (`depth@100ms`)."""
    symbol, _, kind = stream.partition("@")
    return symbol.upper(), kind


def combined_stream_url(base_url: str, streams: Iterable[str]) -> str:
    """The combined-stream URL that subscribes to `streams` (frames come as {"stream": .., "data": ..})."""
    return f"{base_url}?streams={'/'.join(streams)}"
