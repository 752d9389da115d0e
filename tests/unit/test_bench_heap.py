"""The ingestion heap profile's report (bench/ingest_heap.py), on snapshots of this process whose growth
is known."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from tests.helpers import bench_module

ROOT = Path(__file__).resolve().parents[2]
heap = bench_module("ingest_heap")

MIB = 2**20


def grow(into: list, mib: int) -> None:
    into.extend(bytearray(1024) for _ in range(mib * 1024))  # this line holds `mib` MiB more


GROWING_LINE = f"test_bench_heap.py:{grow.__code__.co_firstlineno + 1}"


def test_the_report_finds_the_line_that_grew_and_what_the_heap_holds(tmp_path):
    held: list = []
    tracemalloc.start(1)
    try:
        tracemalloc.take_snapshot().dump(str(tmp_path / "60.snap"))  # before the warm-up ends: left out
        grow(held, 2)
        tracemalloc.take_snapshot().dump(str(tmp_path / "120.snap"))
        grow(held, 8)
        tracemalloc.take_snapshot().dump(str(tmp_path / "180.snap"))
    finally:
        tracemalloc.stop()
    report = heap.heap_report(tmp_path, {120: 300 * MIB, 180: 310 * MIB})
    assert [s["at_s"] for s in report["series"]] == [60, 120, 180]
    assert [s["rss_mib"] for s in report["series"]] == [0, 300, 310]
    series = {s["at_s"]: s["traced_mib"] for s in report["series"]}
    assert 9.5 < series[180] - series[60] < 11.5  # 10 MiB of bytearrays and their list
    assert report["grew"]["from_s"] == 120 and report["grew"]["to_s"] == 180
    top = report["grew"]["lines"][0]
    assert top["line"].endswith(GROWING_LINE) and 7.5 < top["grew_mib"] < 9, top
    assert report["top_at_end"][0]["line"].endswith(GROWING_LINE)
    assert 9.5 < report["top_at_end"][0]["mib"] < 11
