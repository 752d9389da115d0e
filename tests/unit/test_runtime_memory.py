"""Freed heap given back to the OS (cryptomon.runtime): when, and that it works on this machine's libc."""

from __future__ import annotations

import os
import sys

import pytest

from cryptomon.runtime import FreedMemory, release_free_memory


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_released_once_what_is_held_dropped_by_the_threshold_from_its_peak():
    calls = []
    freed = FreedMemory(100, release=lambda: calls.append(1) or True)
    assert [freed.observe(held) for held in (50, 150, 120, 60, 60, 300, 250, 199)] == [
        False, False, False, False, False, False, False, True,
    ]  # fmt: skip
    assert len(calls) == 1 and freed.releases == 1
    # the peak starts again from there: a drop of 100 from the next peak, not from the first
    assert [freed.observe(held) for held in (150, 250, 151, 150)] == [False, False, False, True]
    assert freed.releases == 2


def test_nothing_counted_where_the_libc_cannot_release():
    freed = FreedMemory(10, release=lambda: False)
    assert not freed.observe(100) and not freed.observe(0) and freed.releases == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_freed_in_the_middle_of_the_heap_goes_back_to_the_os():
    """Buffers of 300-2,000-byte objects with small long-lived ones allocated among them (as the book
    stage's buffered diffs and its books): freed, the process keeps them; released, it does not."""
    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim")
    release_free_memory()
    before = rss_mib()
    buffers: list[list[bytes]] = [[] for _ in range(100)]
    kept = []
    for i in range(3000):
        for b in buffers:
            b.append(os.urandom(300 + (i * 37) % 1700))
        if i % 10 == 0:
            kept.append([str(i * j) for j in range(50)])
    held = rss_mib() - before
    assert held > 200, held  # ~330 MiB of buffers
    for b in buffers:
        b.clear()
    freed_alone = rss_mib() - before
    if freed_alone < held / 2:
        pytest.skip(f"this malloc gave back {held - freed_alone:.0f} of {held:.0f} MiB by itself")
    release_free_memory()
    released = rss_mib() - before
    assert released < held / 4, (held, freed_alone, released)
    assert kept
