"""Commit order of the worker's batches, apart from Kafka and the database so that it can be tested alone.

Batches of one partition may be written at the same time by different writers, but their offsets are
committed strictly in the partition's order: a batch's offsets are staged for the next commit only once
it and every earlier batch of its partition are written. A batch whose write failed comes back with the
partition's later batches (written or not) absorbed behind it, so that the retry keeps Kafka's order;
rows already written are no-ops the second time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cryptomon.worker.batch import Batch, Partition

W = TypeVar("W")  # whatever wrote the batch (the worker's writer: a thread and its connection)


@dataclass
class Flight(Generic[W]):
    """A batch being written, on which writer."""

    batch: Batch
    future: Future
    writer: W


@dataclass
class Landed(Generic[W]):
    """A batch written, heading its partition's queue: its offsets are staged."""

    batch: Batch
    result: Any  # what the write returned
    writer: W


@dataclass
class Failed(Generic[W]):
    """A batch whose write failed, with the partition's later batches absorbed behind it."""

    partition: Partition
    batch: Batch
    error: BaseException
    writers: list[W]  # the writers of the failed batch and of the later ones, all free again


class CommitOrder(Generic[W]):
    """Batches written side by side; offsets released per partition only in Kafka's order."""

    def __init__(self) -> None:
        self._queues: dict[Partition, deque[Flight[W]]] = {}  # per partition, in Kafka's order
        self._staged: dict[Partition, int] = {}

    def push(self, tp: Partition, batch: Batch, future: Future, writer: W) -> None:
        self._queues.setdefault(tp, deque()).append(Flight(batch, future, writer))

    def __bool__(self) -> bool:
        return bool(self._queues)

    def flights(self) -> Iterable[Flight[W]]:
        return [f for q in list(self._queues.values()) for f in list(q)]

    def busy(self) -> list[Future]:
        return [f.future for f in self.flights() if not f.future.done()]

    def wait_all(self) -> None:
        wait([f.future for f in self.flights()])

    def messages(self) -> int:
        return sum(len(f.batch) for f in self.flights())

    def reap(self) -> tuple[list[Landed[W]], list[Failed[W]]]:
        """Take in the finished batches that head their partition's queue, in order; stage their offsets.
        A failed head waits for its partition's later batches and takes them back (see the module)."""
        landed: list[Landed[W]] = []
        failed: list[Failed[W]] = []
        for tp in list(self._queues):
            queue = self._queues[tp]
            while queue and queue[0].future.done():
                head = queue.popleft()
                error = head.future.exception()
                if error is not None:
                    wait([f.future for f in queue])  # whatever they did is redone (as no-ops) after the head
                    writers = [head.writer]
                    for later in queue:
                        head.batch.absorb(later.batch)
                        writers.append(later.writer)
                    queue.clear()
                    failed.append(Failed(tp, head.batch, error, writers))
                    break
                for key, offset in head.batch.commit_offsets().items():
                    self._staged[key] = max(offset, self._staged.get(key, 0))
                landed.append(Landed(head.batch, head.future.result(), head.writer))
            if not queue:
                del self._queues[tp]
        return landed, failed

    def take_offsets(self) -> dict[Partition, int]:
        """The staged offsets (next offset to commit per partition), cleared."""
        staged, self._staged = self._staged, {}
        return staged
