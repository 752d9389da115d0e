"""A batch of one table's Kafka messages waiting for one bulk write (pure logic): the consumer's loop only
appends messages; what they become (rows, dead letters, the COPY text) is worked out once, when first asked,
on the writer's thread: the whole batch at once (cryptomon.worker.bulk) or, when a record in it needs it,
record by record (cryptomon.worker.rows), which says why a record is bad.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import Message

from cryptomon.errors import BadData
from cryptomon.worker.bulk import BULK, latest_ms
from cryptomon.worker.rows import PARSERS, SKEW_MS, DeadLetter

Partition = tuple[str, int]  # (topic, partition)


@dataclass
class Parsed:
    """What a batch's first `count` messages became."""

    count: int
    rows: list[tuple]  # fields as TradeRow or BookRow (named only from the record-by-record path)
    sources: list[Message]  # the message of each row
    poison: list[DeadLetter]
    text: bytes | None  # the rows' COPY text, when the whole batch went at once


@dataclass
class Batch:
    """Messages of one table, in Kafka's order per partition, waiting for one bulk insert."""

    table: str
    skew_ms: int = SKEW_MS  # how far an event time may pass its ingestion time (CRYPTOMON_MAX_CLOCK_SKEW_SECONDS)
    partition: Partition | None = None  # the partition of every message, when the batch holds only one's
    messages: list[Message] = field(default_factory=list)  # appended only, never taken out
    started: float | None = None  # monotonic time of the oldest buffered message
    _parsed: Parsed | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.messages)

    def append(self, message: Message, now: float) -> None:
        if self.started is None:
            self.started = now
        self.messages.append(message)

    def parsed(self) -> Parsed:
        """The messages' rows and dead letters (again when messages were appended since)."""
        p = self._parsed
        if p is None or p.count != len(self.messages):
            p = self._parsed = self._parse()
        return p

    def _parse(self) -> Parsed:
        messages = list(self.messages)
        latest = latest_ms(messages, self.skew_ms, time.time_ns() // 1_000_000)
        whole = BULK[self.table](messages, latest, self.skew_ms) if messages else None
        if whole is not None:
            return Parsed(len(messages), whole[0], messages, [], whole[1])
        parse = PARSERS[self.table]
        rows, sources, poison = [], [], []
        for m, bound in zip(messages, latest, strict=True):
            try:
                rows.append(parse(m.value(), bound, self.skew_ms))
            except BadData as exc:
                poison.append(_letter(m, str(exc)))
                continue
            sources.append(m)
        return Parsed(len(messages), rows, sources, poison, None)

    @property
    def rows(self) -> list[tuple]:
        return self.parsed().rows

    @property
    def poison(self) -> list[DeadLetter]:
        return self.parsed().poison

    @property
    def copy_text(self) -> bytes | None:
        """The rows as COPY text (cryptomon.worker.copytext), when the batch was decoded whole."""
        return self.parsed().text

    @property
    def positions(self) -> list[tuple[str, int, int]]:
        """(topic, partition, offset) of each row."""
        return [_position(m) for m in self.parsed().sources]

    @property
    def poison_positions(self) -> list[tuple[str, int, int]]:
        return [(d.topic, d.partition, d.offset) for d in self.poison]

    def dead_letter_for(self, index: int, error: str) -> DeadLetter:
        """A dead_letters row for row `index` (rejected by the database)."""
        return _letter(self.parsed().sources[index], error)

    def due(self, now: float, max_rows: int, max_age: float, drained: bool) -> bool:
        if not self.messages or self.started is None:
            return False
        return len(self.messages) >= max_rows or now - self.started >= max_age or drained

    def commit_offsets(self) -> dict[Partition, int]:
        """Next offset to commit per (topic, partition): the highest buffered offset + 1."""
        if not self.messages:
            return {}
        if self.partition is not None:  # messages are appended in Kafka's order (absorb() appends newer ones)
            return {self.partition: self.messages[-1].offset() + 1}  # type: ignore[operator]
        return {(m.topic(), m.partition()): m.offset() + 1 for m in self.messages}  # type: ignore[misc, operator]

    def absorb(self, newer: Batch) -> None:
        """Append the messages of a batch buffered after this one (a failed write takes its newer
        messages back behind its own, so that the retry keeps Kafka's order)."""
        self.messages += newer.messages
        if self.partition != newer.partition:
            self.partition = None
        if self.started is None:
            self.started = newer.started


def _position(m: Message) -> tuple[str, int, int]:
    return m.topic(), m.partition(), m.offset()  # type: ignore[return-value]


def _letter(m: Message, error: str) -> DeadLetter:
    return DeadLetter(*_position(m), m.key(), m.value(), error)
