"""The hot-path latency histogram against the exact order statistics of what it was given."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cryptomon.latency import PER_DOUBLING, LatencyHistogram

RESOLUTION = 2 ** (1 / PER_DOUBLING) - 1  # relative width of one bucket


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@given(
    st.lists(st.floats(min_value=0.0, max_value=500.0), min_size=1, max_size=400),
    st.sampled_from([0.5, 0.9, 0.99, 1.0]),
)
def test_a_quantile_is_within_one_bucket_of_the_exact_one(values, q):
    h = LatencyHistogram()
    for v in values:
        h.observe(v)
    exact = nearest_rank(values, q)
    got = h.quantile(q)
    assert got is not None and got <= max(values)
    # inside the bucket of the exact value (the lowest bucket starts at 0; the last one is open-ended)
    assert abs(got - exact) <= RESOLUTION * exact + 0.0006 or exact > 200, (got, exact)
    assert h.n == len(values) and math.isclose(h.total, sum(values))


def test_what_health_and_prometheus_show():
    h = LatencyHistogram()
    assert h.summary_ms() == {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": 0.0}
    for ms in [2] * 98 + [40, 900]:
        h.observe(ms / 1000)
    h.observe(-1.0)  # a clock stepped back: ignored
    s = h.summary_ms()
    assert s["n"] == 100 and s["max_ms"] == 900.0
    assert abs(s["p50_ms"] - 2) <= 2 * RESOLUTION and abs(s["p99_ms"] - 40) <= 40 * RESOLUTION

    class One:
        def collect(self):
            yield h.snapshot().metric("x_seconds", "doc")

    registry = CollectorRegistry()
    registry.register(One())
    family = next(text_string_to_metric_families(generate_latest(registry).decode()))
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert buckets["+Inf"] == 100
    assert buckets["0.001"] == 0 and buckets["0.002"] <= 98 <= buckets["0.004"]  # 2 ms on a doubling's edge
    assert buckets["0.032"] == 98 and buckets["0.064"] == 99 and buckets["0.512"] == 99 and buckets["1.024"] == 100
