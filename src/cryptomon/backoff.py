"""Exponential backoff with jitter, reset after a stable period (pure: the caller sleeps)."""

from __future__ import annotations

import random

from cryptomon.errors import ConfigError


class Backoff:
    """Delays initial, 2x, 4x ... capped at `maximum`, each with "equal jitter" (half fixed, half random),
    so that many clients reconnecting at once spread out. `success(stable_for)` resets the sequence once
    a connection has stayed up for `reset_after` seconds."""

    def __init__(
        self, initial: float = 1.0, maximum: float = 60.0, reset_after: float = 30.0, rng: random.Random | None = None
    ):
        if not 0 < initial <= maximum:
            raise ConfigError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return base / 2 + self._rng.uniform(0, base / 2)

    def success(self, stable_for: float) -> None:
        if stable_for >= self.reset_after:
            self.attempt = 0
