"""Where the last run of the ingestion stopped, read back from Kafka.

trade and aggTrade ids are consecutive per symbol, so the highest id of each (symbol, kind) already in
`binance.trades` tells a restarted ingestion where its stream must continue: seeded with it, the
sequence tracker sees the ids streamed while the ingestion was down (or lost in its producer queue by a
kill -9) as a gap, and the backfill fetches them over REST. Only the tail of each partition is read
(symbols of the same partition interleave): a symbol with nothing among the last `tail` messages of
its partition starts fresh, as before.
"""

from __future__ import annotations

import logging

import orjson

from cryptomon.binance.schema import SEQ_FIELD, TRADE_KINDS, validate_payload
from cryptomon.errors import BadData
from cryptomon.kafka.clients import read_to_end

log = logging.getLogger(__name__)


def highest_ids(messages, symbols: frozenset[str] | None) -> dict[tuple[str, str], int]:
    """The highest trade/aggTrade id per (symbol, kind) among Kafka message values (bytes); values that
    are not such events (or not of these symbols; None: any symbol) are skipped."""
    last: dict[tuple[str, str], int] = {}
    for value in messages:
        try:
            d = orjson.loads(value)
        except (orjson.JSONDecodeError, TypeError):
            continue
        # anyone may write into the topic: exact types before anything is hashed or compared
        if type(d) is not dict or type(d.get("e")) is not str or d["e"] not in TRADE_KINDS:
            continue
        try:  # only a record that keeps the contract says where a stream stands
            symbol = validate_payload(d["e"], d)
        except BadData:
            continue
        seq = d[SEQ_FIELD[d["e"]]]
        key = (symbol, d["e"])
        if (symbols is None or symbol in symbols) and seq > last.get(key, -1):
            last[key] = seq
    return last


def last_ids_in_kafka(
    bootstrap: str,
    topic: str,
    symbols: frozenset[str] | None,
    tail: int = 10_000,
    timeout: float = 30.0,
    security: dict | None = None,
) -> dict[tuple[str, str], int]:
    """Read the last `tail` messages of every partition of `topic`; see highest_ids(). An unreachable
    broker raises KafkaException (the ingestion then starts without a baseline and says so)."""
    messages, unread = read_to_end(bootstrap, topic, "cryptomon-resume", tail, timeout, security)
    if unread:
        log.warning("read the tail of %s partitions %s only partly within %.0fs", topic, sorted(unread), timeout)
    return highest_ids((m.value() for m in messages), symbols)
