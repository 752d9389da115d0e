"""The benchmark report renders every figure of a `bench/run` result (bench/run itself is not run in CI:
it takes minutes to tens of minutes)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tests.helpers import bench_module

ROOT = Path(__file__).resolve().parents[2]
harness = bench_module("harness")
REPORT = json.loads((ROOT / "bench" / "results" / "full.json").read_text())
for key in harness.SOAKS:  # the long runs, each in a file of its own
    if (ROOT / "bench" / "results" / f"{key}.json").exists():
        REPORT[key] = json.loads((ROOT / "bench" / "results" / f"{key}.json").read_text())


def test_the_committed_report_is_the_rendering_of_the_committed_results():
    assert (ROOT / "docs" / "benchmarks.md").read_text() == harness.render(REPORT)


def test_the_market_soak_is_in_the_report():
    text = harness.render(REPORT)
    x = REPORT["market_soak"]["runs"][0]
    assert "## Market soak: weeks in an hour" in text
    assert f"| ingest | {x['cpu_cores']['ingest']:g} | {x['peak_rss_mb']['ingest']} |" in text
    for goal in REPORT["market_soak"]["goals"]:
        assert f"| market soak | `{goal}` |" in text


def test_every_headline_figure_is_in_the_report():
    text = harness.render(REPORT)
    r = REPORT["results"]
    for source in r["ingest"]["sources"].values():
        for client in ("cryptomon", "cryptofeed"):
            assert f"| {harness.fmt(source[client]['msgs_per_second'])} |" in text
        assert f"**{source['ratio']['msgs_per_cpu_second']}×**" in text
    w = r["worker"]
    assert f"| {harness.fmt(w['ceiling_copy']['rows_per_second'])} | 100% |" in text
    assert f"| {harness.fmt(w['cryptomon_flush_500']['rows_per_second'])} | {w['share_of_ceiling']:.0%} |" in text
    assert f"p99 {w['latency_2000_events_per_s']['p99_ms']} ms" in text
    assert f"`{w['profile']['own'][0][0]}`" in text
    market = r["market"]["runs"][0]
    assert f"| {harness.fmt(market['measured_events_per_second'])} | {market['symbols_stored']} |" in text
    assert f"Highest sustained: **{r['spark']['highest_sustained_events_per_second']:,} events/s**" in text
    for name in ("market_depth", "market_cluster"):  # one broker and three, the same load, the book on
        run = r[name]["runs"][0]
        assert (
            f"| {harness.fmt(run['measured_events_per_second'])} | {harness.fmt(run['produce_latency']['p50_ms'], ' ms')}"
            in text
        )
    book = r["market_depth"]["runs"][0]["book"]
    assert f"{book['diffs_sent_by_exchange']:,} / {book['diffs_produced']:,}" in text
    for run in (r["book"]["market"], r["book"]["real"]):  # the book stage against cryptofeed, per diff
        mine, peer = run["cryptomon_every_record"], run["cryptofeed_book"]
        assert f"| {mine['us_per_diff']} µs | {run['cryptomon_depth_only']['us_per_diff']} µs | " in text
        assert f"| {peer['us_per_diff']} µs | {run['depth_only_to_cryptofeed']}× |" in text
    live = r["sim"]["live"]
    assert f"| simulator, live market | {live['received_per_second']['trade']:,.0f} |" in text
    assert f"{r['sim']['baseline_firehose']['frames_per_second']:,.0f}" in text
    for run in r["e2e"]["runs"]:
        offered = harness.fmt(run.get("offered_events_per_second"))
        assert f"| {run['target_events_per_second']:,} | {offered} | {run['measured_events_per_second']:,} |" in text


def test_unmet_goals_and_failed_benchmarks_are_said():
    report = copy.deepcopy(REPORT)
    report["results"]["spark"] = {"benchmark": "spark", "failed": True, "exit_code": 1}
    report["results"]["worker"]["goals"][">=70%_of_copy"] = False
    text = harness.render(report)
    assert "Failed to run: spark" in text and "## Spark" not in text
    assert "| worker | `>=70%_of_copy` | **no** |" in text


def test_late_data_is_reported_when_measured():
    report = copy.deepcopy(REPORT)
    run = report["results"]["e2e"]["runs"][0]
    run["stall_seconds"] = 30
    run["repair"] = {"n": 4, "p50_ms": 12_300.0, "p99_ms": 15_900.0, "backfilled_windows": 4, "repaired_windows": 3}
    text = harness.render(report)
    assert "4 windows got backfilled trades, the repair loop changed 3" in text
    assert "p50 12.3 s / p99 15.9 s (4 windows)" in text
    del run["repair"]["repaired_windows"]  # since the job merges late trades itself: no repair loop
    assert "4 windows got backfilled trades, merged into them by the next micro-batches" in harness.render(report)
