"""Where each (symbol, kind) of the ingestion stands, kept durably: its last id and its open gaps, in the
compacted topic `binance.ingest_state` (key "SYMBOL|kind", value {"last": id, "gaps": [[start, end], ...]}).

A restarted ingestion (on this machine or another) reads the topic back and continues every stream from
there: what was streamed while it was down becomes a gap, and the gaps the previous run had not filled
yet are filled now. Reading a compacted topic costs one value per stream, whatever the market's rate, so
this works for the whole market, where scanning the data topics' tails would reach back only seconds.

A snapshot is published only once the messages produced before it have been delivered (as the producer's
counts tell), so that a state never claims ids Kafka does not hold; between that and the restart, the
tail of `binance.trades` (see resume.py) still corrects a state that is ahead of the data.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from cryptomon.binance.schema import SYMBOL, TRADE_KINDS, is_id
from cryptomon.errors import Unavailable
from cryptomon.ingestion.producer import KafkaSink
from cryptomon.ingestion.sequences import SequenceTracker
from cryptomon.kafka.clients import read_to_end

log = logging.getLogger(__name__)

Key = tuple[str, str]
Entry = tuple[int, list[list[int]]]


def encode_key(key: Key) -> bytes:
    return f"{key[0]}|{key[1]}".encode()


def decode(key: bytes | None, value: bytes | None) -> tuple[Key, Entry] | None:
    """A state message, or None for anything else (a tombstone, a foreign value)."""
    if key is None or value is None:
        return None
    try:
        symbol, kind = key.decode().split("|", 1)
        d = orjson.loads(value)
        last, gaps = d["last"], d.get("gaps", [])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    # anyone may write into the topic: only a well-formed entry of a Binance symbol counts
    if SYMBOL.fullmatch(symbol) is None or kind not in TRADE_KINDS or not is_id(last) or type(gaps) is not list:
        return None
    if not all(type(g) is list and len(g) == 2 and is_id(g[0]) and is_id(g[1]) and g[0] <= g[1] <= last for g in gaps):
        return None
    return (symbol, kind), (last, [[a, b] for a, b in gaps])


class StatePublisher:
    """Publishes the tracker's changed entries every `interval` seconds, once the data before them is in."""

    def __init__(self, sink: KafkaSink, topic: str, tracker: SequenceTracker, interval: float = 5.0):
        self.sink = sink
        self.topic = topic
        self.tracker = tracker
        self.interval = interval
        self._published: dict[Key, Entry] = {}
        self._pending: tuple[dict[Key, Entry], int] | None = None  # (snapshot, producer mark)
        self.published = 0

    def tick(self) -> int:
        """Publish the pending snapshot if its data is delivered, then take the next one. Returns how many
        entries were published."""
        sent = 0
        if self._pending is not None and self.sink.settled(self._pending[1]):
            snapshot, _ = self._pending
            for key, entry in snapshot.items():
                if self._published.get(key) != entry:
                    value = orjson.dumps({"last": entry[0], "gaps": entry[1], "at": time.time_ns() // 1_000_000})
                    self.sink.produce(self.topic, encode_key(key), value)
                    self._published[key] = entry
                    sent += 1
            self._pending = None
            self.published += sent
        if self._pending is None:
            self._pending = (self.tracker.state(), self.sink.produced)
        return sent

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()


def load(bootstrap: str, topic: str, timeout: float = 30.0, security: dict | None = None) -> dict[Key, Entry]:
    """The newest state of every (symbol, kind) in the topic (read to its end)."""
    messages, unread = read_to_end(bootstrap, topic, "cryptomon-state", timeout=timeout, security=security)
    if unread:
        raise Unavailable(f"read {topic} only partly within {timeout:.0f}s")
    out: dict[Key, Entry] = {}
    for m in messages:
        item = decode(m.key(), m.value())
        if item:
            out[item[0]] = item[1]
    return out


def merge(state: dict[Key, Entry], tail: dict[Key, int]) -> dict[Key, Entry]:
    """The durable state, corrected by the highest ids found in the tail of the data topic: Kafka holds the
    truth for a stream it has recent messages of; the state covers every stream (pure)."""
    out = dict(state)
    for key, last in tail.items():
        if key not in out:
            out[key] = (last, [])
        else:
            _, gaps = out[key]
            out[key] = (last, [g for g in gaps if g[1] <= last])
    return out
