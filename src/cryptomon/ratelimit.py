"""A sliding count of events over the last seconds (pure: time is an argument). Used on both sides of
Binance's limits: the simulator enforces them with it, the ingestion paces itself with it."""

from __future__ import annotations

from collections import deque


class Window:
    """How many events happened in the last `seconds`; `hit()` records one and says whether the limit
    still holds (so the caller refuses the one that breaks it)."""

    def __init__(self, limit: int, seconds: float):
        self.limit = limit
        self.seconds = seconds
        self._times: deque[float] = deque()

    def hit(self, now: float) -> bool:
        times = self._times
        while times and times[0] <= now - self.seconds:
            times.popleft()
        times.append(now)
        return len(times) <= self.limit

    def __len__(self) -> int:
        return len(self._times)
