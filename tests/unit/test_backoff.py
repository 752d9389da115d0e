"""Exponential backoff with jitter."""

from __future__ import annotations

import random

from cryptomon.backoff import Backoff


def test_backoff_doubles_with_jitter_caps_and_resets():
    b = Backoff(1.0, 60.0, reset_after=30.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    for i, d in enumerate(delays):
        base = min(60.0, 2.0**i)
        assert base / 2 <= d <= base
    assert delays[-1] <= 60.0
    b.success(5.0)
    assert b.attempt == 8  # not stable long enough
    b.success(31.0)
    assert b.attempt == 0 and b.next_delay() <= 1.0
