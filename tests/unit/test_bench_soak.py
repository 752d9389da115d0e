"""The market soak's measures (bench/soak.py), on series whose answer is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import bench_module

ROOT = Path(__file__).resolve().parents[2]
soak = bench_module("soak")

MIB = 2**20


def test_the_memory_slope_leaves_out_the_warm_up_and_is_per_hour():
    every = 10.0  # a sample every 10 s for an hour: 360 samples
    warm_up = [100 * MIB + i * MIB for i in range(90)]  # +1 MiB a sample for the first quarter
    flat = [190 * MIB + (i % 2) * MIB for i in range(270)]  # then flat, with noise of 1 MiB
    assert abs(soak.slope_per_hour(warm_up + flat, every) / MIB) < 0.5
    growing = [100 * MIB + i * MIB / 36 for i in range(360)]  # 10 MiB an hour, all along
    assert soak.slope_per_hour(growing, every) / MIB == pytest.approx(10.0)
    assert soak.slope_per_hour([1, 2], every) is None


def test_disk_growth_is_measured_over_the_second_half():
    series = [
        {"t": 60.0 * i, "postgres": (i if i < 10 else 10) * MIB, "kafka": i * 2 * MIB, "checkpoint": 0, "archive": 0}
        for i in range(20)
    ]
    disk = soak.disk_result(series)
    assert {k: v for k, v in disk["postgres"].items() if k != "mib_per_sample"} == {
        "start_mib": 0.0,
        "end_mib": 10.0,
        "max_mib": 10.0,
        "second_half_mib_per_hour": 0.0,
    }
    assert disk["postgres"]["mib_per_sample"][:3] == [0.0, 1.0, 2.0]
    assert disk["kafka"]["second_half_mib_per_hour"] == pytest.approx(120.0)  # 2 MiB a minute


def test_a_saw_without_a_trend_is_not_growth():
    # an hour sampled each minute, chunks dropped at once: 100 MiB, up 50 a minute, back every third minute;
    # the second half runs from the saw's foot to its top, which its two ends alone would call +207 MiB/h
    saw = [100 + 50 * (i % 3) for i in range(60)]
    series = [
        {"t": 60.0 * i, "postgres": v * MIB, "kafka": 0, "checkpoint": 0, "archive": 0} for i, v in enumerate(saw)
    ]
    assert (saw[30], saw[-1]) == (100, 200)
    assert abs(soak.disk_result(series)["postgres"]["second_half_mib_per_hour"]) < 100
    for sample in series[-10:]:  # a real climb in the last ten minutes is still seen
        sample["postgres"] += 300 * MIB
    assert soak.disk_result(series)["postgres"]["second_half_mib_per_hour"] > 100


def test_the_soak_goals_need_every_measure():
    run = {
        "rss_slope_mib_per_hour": {"ingest": 3.0, "worker": 12.0, "spark": 1.0, "feed": 500.0},
        "peak_rss_mb": {"spark": 1400},
        "disk": {"postgres": {"second_half_mib_per_hour": 20.0}},
        "accounting": {"exact": True},
        "archive": {"keys": {"trades": {"once": True}}, "rows_in_files_equal_logged": True, "files_bad": []},
    }
    g = soak.goals(run)
    assert g["soak_pipeline_flat_<=10MiB/h"] is False  # the worker; the simulator is not the pipeline
    assert g["soak_spark_rss<=1.5GB"] and g["soak_postgres_bounded_by_retention"]
    assert g["soak_exact_accounting_db_plus_archive"]
    run["archive"]["keys"]["trades"]["once"] = False
    assert not soak.goals(run)["soak_exact_accounting_db_plus_archive"]


def test_the_rss_series_is_kept_a_value_a_minute_and_reported_at_each_quarter():
    harness = bench_module("harness")
    series = {"book": [i * MIB for i in range(360)]}  # a sample every 10 s for an hour, +1 MiB each
    minutes = soak.per_minute(series, 10.0)["book"]
    assert len(minutes) == 60 and minutes[:3] == [0, 6, 12] and minutes[-1] == 354
    assert harness.quarters(minutes) == [84, 174, 264, 354]
    assert harness.quarters([1.0, 2.0, 3.0]) == []


def test_the_backfill_after_each_cut_is_timed_from_the_ingestion_log(tmp_path):
    log = tmp_path / "ingest.log"
    log.write_text(
        "2026-12-05 12:20:20,088 INFO    cryptomon.ingestion.connection: connection 0: connected (1024 streams)\n"
        "2026-12-05 12:35:25,170 INFO    cryptomon.ingestion.connection: connection 0: reconnecting in 1.0s (attempt 1)\n"
        "2026-12-05 12:35:25,172 INFO    cryptomon.ingestion.connection: connection 1: reconnecting in 0.7s (attempt 1)\n"
        "2026-12-05 12:35:27,099 INFO    cryptomon.ingestion.backfill: backfilling BTCUSDT trade ids 1..3\n"
        "2026-12-05 12:38:59,670 INFO    cryptomon.ingestion.backfill: backfilling ZZZUSDT aggTrade ids 7..9\n"
        "a line of something else\n"
        "2026-12-05 12:50:26,735 INFO    cryptomon.ingestion.connection: connection 1: reconnecting in 0.6s (attempt 1)\n"
    )
    assert soak.backfill_after_cuts(log) == [
        {"gaps": 2, "last_fill_began_after_s": 214.5},
        {"gaps": 0, "last_fill_began_after_s": None},
    ]
    assert soak.backfill_after_cuts(tmp_path / "absent.log") == []


def test_a_tree_counts_its_ended_children_cpu_and_trends_only_settled_processes():
    import os
    import subprocess
    import sys

    common = bench_module("common")
    cpu0, rss, _ = common.tree_usage(os.getpid())
    assert rss > 10 * MIB
    # a child that burns CPU and ends: its CPU stays with the tree (its parent's reaped children)
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"], check=True)  # fmt: skip
    assert common.tree_usage(os.getpid())[0] - cpu0 >= 0.35
    child = subprocess.Popen([sys.executable, "-c", "import time; print(1, flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert child.stdout.readline() == b"1\n"  # started and loaded
        _, with_child, settled = common.tree_usage(os.getpid(), settled_after=3600.0 * 24 * 365 * 100)
        assert settled == 0  # nothing here has lived a century
        _, _, young_out = common.tree_usage(os.getpid(), settled_after=0.0)
        assert young_out >= with_child - 2 * MIB  # everything has lived 0 s: all of the tree
        # a settled_after between the test's own age and the child's leaves out the just-started child
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        child_age = uptime - common._stat(child.pid)[3]
        _, _, without_child = common.tree_usage(os.getpid(), settled_after=child_age + 0.5)
        child_rss = int(Path(f"/proc/{child.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        assert child_rss > 2 * MIB
        assert abs(with_child - without_child - child_rss) < child_rss / 2
    finally:
        child.kill()
        child.wait()
