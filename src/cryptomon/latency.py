"""A latency histogram cheap enough for the hot path: fixed log-spaced buckets (8 a doubling, so a
quantile is read within 9 %), one increment per observation, quantiles and a Prometheus view on demand."""

from __future__ import annotations

import math

from prometheus_client.core import HistogramMetricFamily

LOWEST_SECONDS = 0.0005  # everything below lands in the first bucket
PER_DOUBLING = 8
BUCKETS = PER_DOUBLING * 19  # up to 0.5 ms * 2**19 ≈ 262 s; the last bucket holds everything above
_SCALE = PER_DOUBLING / math.log(2)


def upper_bound(i: int) -> float:
    return LOWEST_SECONDS * 2 ** ((i + 1) / PER_DOUBLING)


class LatencyHistogram:
    """Counts of observations per bucket; `quantile()` interpolates inside a bucket."""

    __slots__ = ("counts", "max", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        if seconds < 0:  # a clock stepped back: nothing to learn from it
            return
        i = int(math.log(seconds / LOWEST_SECONDS) * _SCALE) if seconds > LOWEST_SECONDS else 0
        self.counts[i if i < BUCKETS else BUCKETS - 1] += 1
        self.n += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def snapshot(self) -> LatencyHistogram:
        copy = LatencyHistogram()
        copy.counts, copy.n, copy.total, copy.max = list(self.counts), self.n, self.total, self.max
        return copy

    def quantile(self, q: float) -> float | None:
        """The q-quantile in seconds (None before any observation), never above the largest seen."""
        if not self.n:
            return None
        rank, seen = q * self.n, 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                low = upper_bound(i - 1) if i else 0.0
                return min(self.max, low + (upper_bound(i) - low) * (rank - seen) / c)
            seen += c
        return self.max

    def summary_ms(self) -> dict:
        """What /health shows: n, p50, p99 and max in milliseconds."""
        return {
            "n": self.n,
            **{k: None if (v := self.quantile(q)) is None else round(v * 1000, 1)
               for k, q in (("p50_ms", 0.5), ("p99_ms", 0.99))},
            "max_ms": round(self.max * 1000, 1),
        }  # fmt: skip

    def metric(self, name: str, doc: str) -> HistogramMetricFamily:
        """A Prometheus histogram with one bucket a doubling (the fine buckets summed)."""
        buckets, cumulative = [], 0
        for i, c in enumerate(self.counts):
            cumulative += c
            if (i + 1) % PER_DOUBLING == 0 and i < BUCKETS - 1:
                buckets.append((f"{upper_bound(i):g}", cumulative))
        buckets.append(("+Inf", self.n))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)
