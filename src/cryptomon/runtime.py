"""The CPython runtime tuned for a stage's hot loop: the cyclic garbage collector, and freed heap given back.

A stage's per-message objects (decoded records, rows, Kafka positions) hold no cycles: reference counting
frees them when their batch is written. CPython's cyclic collector still runs every 700 net allocations
over the young objects, and every few of those over everything that survived start-up (modules, settings,
the process's long-lived state), to find cycles that are not there: the worker spent 13 % of its main
thread in `gc_collect_main`, the ingestion 4.5 % (py-spy --native, 2026-12-03). `tune_gc()`, called once
start-up is over, moves what exists then out of the collector's sight (`gc.freeze()`: never scanned
again) and lets the young generation grow to `YOUNG_OBJECTS` before a collection. Cycles are still
collected, less often: the garbage waiting for it is bounded by that threshold.

glibc's malloc keeps what a process frees in its arenas for reuse: once a structure that held hundreds of
MiB empties (the book stage's buffered diffs after every book of a resync got its snapshot), the process's
resident memory stays at that high-water mark, only the top of the heap being trimmed by itself. Of 1.4
GiB of 300–2,000-byte objects freed while small long-lived ones were allocated among them, none was given
back until `malloc_trim(0)` (52 ms), which gave back all but 67 MiB (2026-12-07). `FreedMemory` calls it
when what a stage holds has dropped by a threshold since its peak.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable

YOUNG_OBJECTS = 50_000  # CPython's default is 700; at ~100 bytes an object, a few MiB at most in waiting


def tune_gc(young: int = YOUNG_OBJECTS) -> None:
    """Freeze what start-up left and collect the young generation every `young` allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim from the symbols the process has loaded, or None where the C library has none
    (musl, macOS). A ctypes call releases the GIL while it runs."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc's `malloc_trim(0)`); False where it cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class FreedMemory:
    """Calls `release_free_memory()` once what a structure holds (in any unit: diffs, rows) has dropped by
    `threshold` from its peak since the last call."""

    def __init__(self, threshold: int, release: Callable[[], bool] = release_free_memory):
        self.threshold = threshold
        self.release = release
        self.peak = 0
        self.releases = 0

    def observe(self, held: int) -> bool:
        """`held`: what the structure holds now. True when the freed memory was given back."""
        self.peak = max(self.peak, held)
        if self.peak - held < self.threshold:
            return False
        self.peak = held
        if self.release():
            self.releases += 1
            return True
        return False
