"""Keep Kafka and PostgreSQL off a full disk.

Neither copes well with running out of space: PostgreSQL PANICs when it cannot write its WAL, and Kafka
takes a full log directory offline (a single-directory broker then shuts down). So the processes that
make them grow stop short of it: below `CRYPTOMON_DISK_MIN_FREE_MB` free on the disk of the state folder
(where the local stack keeps its data), the ingestion disconnects from the exchange and the worker stops
inserting (nothing committed), each with a log line naming the folder and the figures, a 503 on /health
and a metric. When space is back they resume by themselves: trades missed in between are backfilled
from the exchange's REST API, Kafka's backlog is drained by the worker. `cryptomon services up` refuses
to start on such a disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptomon.errors import Unavailable

MB = 1 << 20


class DiskNearlyFull(Unavailable):
    """Writing more could fill the disk under Kafka or PostgreSQL."""


@dataclass(frozen=True)
class DiskStatus:
    """Free space against the minimum on the state folder's disk, at one moment."""

    path: Path
    free_bytes: int
    min_free_bytes: int

    @property
    def ok(self) -> bool:
        return self.free_bytes >= self.min_free_bytes

    def message(self) -> str:
        return (
            f"disk nearly full: {self.free_bytes / MB:.0f} MB free under {self.path}, below the minimum of "
            f"{self.min_free_bytes / MB:.0f} MB (CRYPTOMON_DISK_MIN_FREE_MB)"
        )

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "free_mb": round(self.free_bytes / MB, 1),
            "min_free_mb": round(self.min_free_bytes / MB, 1),
        }


class DiskGuard:
    """Free space of one folder's disk against a minimum, read at most every `interval` seconds (a
    statvfs call is cheap, but the hot loops ask far more often than the answer changes)."""

    def __init__(
        self,
        path: Path | None,
        min_free_bytes: int,
        interval: float = 0.5,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self.min_free_bytes = min_free_bytes
        self.interval = interval
        self._statvfs = statvfs
        self._clock = clock
        self._last: DiskStatus | None = None
        self._read_at = float("-inf")

    @classmethod
    def for_state_dir(cls, state_dir: Path, min_free_mb: int) -> DiskGuard:
        """Watch the state folder's disk; off when the minimum is 0 or the folder does not exist (the
        services run elsewhere, e.g. in docker compose)."""
        on = min_free_mb > 0 and state_dir.is_dir()
        return cls(state_dir.resolve() if on else None, min_free_mb * MB)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def status(self) -> DiskStatus | None:
        if self.path is None:
            return None
        now = self._clock()
        if self._last is None or now - self._read_at >= self.interval:
            try:
                st = self._statvfs(str(self.path))
                free = st.f_bavail * st.f_frsize
            except OSError:
                free = self.min_free_bytes  # a folder that vanished is not a full disk; say nothing
            self._last, self._read_at = DiskStatus(self.path, free, self.min_free_bytes), now
        return self._last

    def check(self) -> str | None:
        """None while there is room, else the message saying why writes must wait."""
        st = self.status()
        return None if st is None or st.ok else st.message()

    def as_dict(self) -> dict | None:
        st = self.status()
        return None if st is None else st.as_dict()
