from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from cryptomon.diskguard import MB, DiskGuard


class FakeDisk:
    def __init__(self, free_mb: float):
        self.free_mb = free_mb
        self.calls = 0

    def __call__(self, path: str):
        self.calls += 1
        return SimpleNamespace(f_bavail=int(self.free_mb * MB) // 4096, f_frsize=4096)


def test_check_names_the_folder_and_both_figures_below_the_minimum():
    disk, now = FakeDisk(500), [0.0]
    guard = DiskGuard(Path("/data/state"), 100 * MB, interval=0.5, statvfs=disk, clock=lambda: now[0])
    assert guard.check() is None
    assert guard.as_dict() == {"path": "/data/state", "ok": True, "free_mb": 500.0, "min_free_mb": 100.0}
    disk.free_mb, now[0] = 42, 1.0
    msg = guard.check()
    assert msg == (
        "disk nearly full: 42 MB free under /data/state, below the minimum of 100 MB (CRYPTOMON_DISK_MIN_FREE_MB)"
    )
    assert guard.as_dict()["ok"] is False
    disk.free_mb, now[0] = 100, 2.0  # exactly the minimum is enough
    assert guard.check() is None


def test_reads_the_disk_at_most_once_per_interval():
    disk, now = FakeDisk(500), [10.0]
    guard = DiskGuard(Path("/x"), 100 * MB, interval=0.5, statvfs=disk, clock=lambda: now[0])
    for _ in range(1000):
        guard.check()
    assert disk.calls == 1
    disk.free_mb = 1
    now[0] = 10.4
    assert guard.check() is None  # the cached reading
    now[0] = 10.5
    assert guard.check() is not None and disk.calls == 2


def test_off_when_the_minimum_is_zero_or_the_folder_does_not_exist(tmp_path):
    assert not DiskGuard.for_state_dir(tmp_path, 0).enabled
    missing = DiskGuard.for_state_dir(tmp_path / "nope", 100)
    assert not missing.enabled and missing.check() is None and missing.as_dict() is None
    real = DiskGuard.for_state_dir(tmp_path, 1)
    st = os.statvfs(tmp_path)
    assert real.enabled and abs(real.status().free_bytes - st.f_bavail * st.f_frsize) < 64 * MB


def test_a_folder_that_vanished_is_not_reported_as_full():
    def gone(path):
        raise FileNotFoundError(path)

    assert DiskGuard(Path("/gone"), 100 * MB, statvfs=gone).check() is None
