"""When the job's next micro-batch starts (pure but for the clock and the wait).

Spark's processing-time trigger starts a batch at every multiple of its interval since the epoch
(ProcessingTimeExecutor.nextBatchTime), so the batch that closes a minute's window starts the instant the
window ends, and the window's last trades, still on their way through the ingestion and Kafka (acks=all),
wait a whole interval for the next one: measured at the whole market, the trade windows' trigger wait was
p99 10,001 ms (docs/benchmarks.md). Spark's trigger has no offset, so the job runs its query with a trigger
of 0 (the next batch as soon as the last ends) and its sink waits, after writing, until the next multiple of
the interval *plus the offset* after the batch began: batches start `offset` seconds after each boundary,
one per interval as before, and a batch that overran its interval is followed at once, as Spark's would be.
"""

from __future__ import annotations

import math
import threading
import time


class Pacer:
    """Batches at k * interval + offset seconds since the epoch (offset taken modulo the interval)."""

    def __init__(self, interval: float, offset: float, clock=time.time):
        if interval <= 0:
            raise ValueError("a paced trigger needs an interval")
        self.interval, self.offset, self.clock = interval, offset % interval, clock

    def next_start(self, began: float) -> float:
        """The first start strictly after a batch that began at `began` (epoch seconds)."""
        start = (math.floor((began - self.offset) / self.interval) + 1) * self.interval + self.offset
        return start if start > began else start + self.interval  # `began` on a start, give or take rounding

    def wait(self, began: float, stopping: threading.Event) -> float:
        """Wait until the next start after `began` (at once when stopping); the seconds waited."""
        delay = self.next_start(began) - self.clock()
        if delay <= 0:
            return 0.0
        stopping.wait(delay)
        return delay
