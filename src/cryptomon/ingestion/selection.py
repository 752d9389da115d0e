"""Which symbols this ingestion follows, and over which connections (pure).

`CRYPTOMON_SYMBOLS` lists symbols, patterns (`*USDT`, `BTC*`) or `ALL`; patterns are resolved against
`/api/v3/exchangeInfo` (status TRADING only) and re-resolved periodically, so listings and delistings
are followed without a restart. With `CRYPTOMON_INGEST_INSTANCE=i/N`, N instances share the symbols by
rendezvous hashing: each symbol belongs to the instance with the highest hash of (symbol, instance), so
every symbol has exactly one owner, and when N changes only the symbols of the instances that came or
went move. The streams are then split over as few connections as Binance's 1,024 streams per
connection allow, a symbol's three streams always on the same one.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable

from cryptomon.binance.schema import KINDS


def is_pattern(spec: str) -> bool:
    return spec == "ALL" or any(c in spec for c in "*?")


def resolve(specs: Iterable[str], listed: dict[str, str]) -> list[str]:
    """The symbols `specs` names: plain names as given, patterns matched against the TRADING symbols of
    `listed` ({symbol: status} from exchangeInfo). Sorted, without duplicates."""
    trading = sorted(s for s, status in listed.items() if status == "TRADING")
    out: set[str] = set()
    for spec in specs:
        if spec == "ALL":
            out.update(trading)
        elif is_pattern(spec):
            out.update(fnmatch.filter(trading, spec))
        else:
            out.add(spec)
    return sorted(out)


def owner(symbol: str, instances: int) -> int:
    """The instance (0..instances-1) that ingests `symbol`: rendezvous (highest random weight) hashing."""

    def weight(i: int) -> int:
        return int.from_bytes(hashlib.blake2b(f"{symbol}|{i}".encode(), digest_size=8).digest(), "big")

    return max(range(instances), key=weight)


def mine(symbols: Iterable[str], instance: int, instances: int) -> list[str]:
    return [s for s in symbols if owner(s, instances) == instance]


def shard(symbols: Iterable[str], per_connection: int, per_symbol: int = len(KINDS)) -> list[tuple[str, ...]]:
    """Symbols grouped so that each group's streams (`per_symbol` each, all on one connection) fit one
    connection; stable for a given list (a symbol keeps its connection as long as the symbols before it do
    not change)."""
    per = max(1, per_connection // per_symbol)
    ordered = sorted(symbols)
    return [tuple(ordered[i : i + per]) for i in range(0, len(ordered), per)]
