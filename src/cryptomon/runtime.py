"""The CPython runtime tuned for a stage's hot loop: the cyclic garbage collector.

A stage's per-message objects (decoded records, rows, Kafka positions) hold no cycles: reference counting
frees them when their batch is written. CPython's cyclic collector still runs every 700 net allocations
over the young objects, and every few of those over everything that survived start-up (modules, settings,
the process's long-lived state), to find cycles that are not there: the worker spent 13 % of its main
thread in `gc_collect_main`, the ingestion 4.5 % (py-spy --native, 2026-12-03). `tune_gc()`, called once
start-up is over, moves what exists then out of the collector's sight (`gc.freeze()`: never scanned
again) and lets the young generation grow to `YOUNG_OBJECTS` before a collection. Cycles are still
collected, less often: the garbage waiting for it is bounded by that threshold.
"""

from __future__ import annotations

import gc

YOUNG_OBJECTS = 50_000  # CPython's default is 700; at ~100 bytes an object, a few MiB at most in waiting


def tune_gc(young: int = YOUNG_OBJECTS) -> None:
    """Freeze what start-up left and collect the young generation every `young` allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
