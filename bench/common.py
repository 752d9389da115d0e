"""Shared pieces of the benchmarks: a throw-away local stack, process CPU time, Kafka counting, output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
# the recorded Binance captures beside the checkout (../shared/data/real), never copied into it
REAL_DATA = Path(os.environ.get("CRYPTOMON_REAL_DATA") or ROOT.parent / "shared" / "data" / "real")
sys.path.insert(0, str(ROOT))

from cryptomon.kafka.clients import consumer_config  # noqa: E402
from cryptomon.services.local import cluster_bootstrap  # noqa: E402
from cryptomon.settings import Settings  # noqa: E402


@contextmanager
def bench_stack(kafka_port: int = 39092, pg_port: int = 35433, kafka_nodes: int = 1):
    """Kafka (one node, or a cluster of `kafka_nodes` with topics replicated as on a real cluster) +
    TimescaleDB of their own, in a temporary state folder, stopped and deleted afterwards."""
    from cryptomon.services.local import throwaway_stack

    with throwaway_stack(kafka_port, pg_port, prefix="cryptomon-bench-", kafka_heap="1g",
                         kafka_nodes=kafka_nodes) as settings:  # fmt: skip
        yield settings


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def env_for(settings: Settings, **extra) -> dict:
    env = {
        **os.environ,
        "CRYPTOMON_KAFKA_BOOTSTRAP": cluster_bootstrap(settings),
        "CRYPTOMON_PG_DSN": settings.pg_dsn,
        "CRYPTOMON_STATE_DIR": str(settings.state_dir),
        "CRYPTOMON_LOG_LEVEL": "WARNING",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def spawn(args: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
    )


class TopicCounter:
    """Counts messages on topics through their high watermarks (cheap, no consumption)."""

    def __init__(self, bootstrap: str, topics: list[str]):
        self.c = Consumer(consumer_config(bootstrap, "bench-counter"))
        md = self.c.list_topics(timeout=10)
        self.parts = [TopicPartition(t, p) for t in topics for p in md.topics[t].partitions]
        self.base = self._total()

    def _total(self) -> int:
        return sum(self.c.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.parts)

    def count(self) -> int:
        return self._total() - self.base

    def close(self) -> None:
        self.c.close()


def bytes_under(folder: Path) -> int:
    """What a folder holds on disk (a Kafka node's log directory, a checkpoint, the archive)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def machine() -> dict:
    import pyspark

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyspark": pyspark.__version__,
        "python_loop_ns": python_loop_ns(),
    }


def python_loop_ns(n: int = 2_000_000) -> float:
    """Nanoseconds per iteration of a plain Python loop (best of 3): this machine's speed for the pure-Python
    parts, to compare runs made on different machines of the same kind."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - t0)
    return round(best / n * 1e9, 1)


def emit(result: dict, out: Path | None = None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"benchmark: timed out waiting for {what}")


def _stat(pid: int) -> tuple[int, float, int, float] | None:
    """(parent pid, CPU seconds of it and of its children it has reaped, RSS bytes, seconds since boot at its
    start) of a process, from /proc; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    tck, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    # utime, stime, cutime, cstime: a child that has ended (a retention pass, a PostgreSQL backend) still counts
    cpu = sum(int(f) for f in fields[11:15]) / tck
    return int(fields[1]), cpu, int(fields[21]) * page, int(fields[19]) / tck


# a process of a tree that has lived this long counts in its memory's trend (a retention pass's child does not)
SETTLED_AFTER_S = 60.0


def tree_usage(root: int, settled_after: float = SETTLED_AFTER_S) -> tuple[float, int, int]:
    """CPU seconds and RSS of a process and all its descendants, and the RSS of those of them that have lived
    `settled_after` seconds or more: a child that lives seconds (one retention pass) is in the peak, but a
    trend of a long-lived process's memory is not a sample that happened to catch it."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))):
            stats[int(entry)] = st
    members, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, *_) in stats.items():
            if ppid == parent and pid not in members:
                members.add(pid)
                frontier.append(pid)
    now = float(Path("/proc/uptime").read_text().split()[0])
    alive = [stats[p] for p in members if p in stats]
    cpu = sum(st[1] for st in alive)
    rss = sum(st[2] for st in alive)
    settled = sum(st[2] for st in alive if now - st[3] >= settled_after)
    return cpu, rss, settled


def quarter_mean(values: list[float], q: int) -> float:
    """Mean of the q-th quarter (0-3) of a series."""
    n = len(values)
    part = values[q * n // 4 : (q + 1) * n // 4] or values[-1:] or [0]
    return sum(part) / len(part)
