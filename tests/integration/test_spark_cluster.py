"""`cryptomon spark` on a Spark standalone cluster (master + worker from PySpark's spark-class, as
`services up --spark-cluster` starts them): its executor killed -9 mid-run, then the driver killed -9 and
restarted from its checkpoint; every closed window still equals the oracle."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from cryptomon.services.spark_cluster import spark_cluster
from cryptomon.simulator.scripted import Span, scripted_events
from tests.helpers import Proc, running, wait_for
from tests.integration.test_spark import (
    MINUTE,
    end_offsets,
    fetch,
    load_raw,
    new_symbols,
    produce,
    spark_env,
    wait_metrics_match_oracle,
)

pytestmark = pytest.mark.integration
PORT_OFFSET = 300  # master on 7377, its UI on 8390, the worker's UI on 8391: beside a cluster of one's own


@pytest.fixture()
def cluster(stack):
    daemons = spark_cluster(stack, PORT_OFFSET)
    try:
        for daemon in daemons:
            daemon.start()
        yield daemons[0].master_url, daemons[1].pid()
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


def executors(worker_pid: int) -> list[int]:
    """The executor processes the worker daemon started (its descendants running the executor backend)."""
    out = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True, text=True).stdout
    return [p for p in map(int, out.split()) if worker_pid in ancestors(p)]


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.append(pid)
    return out


def metric_rows(stack, symbols) -> int:
    return fetch(stack.pg_dsn, "SELECT count(*) FROM trade_metrics WHERE symbol = ANY(%s)", (list(symbols),))[0][0]


def test_the_job_on_a_standalone_cluster_survives_its_executor_and_its_driver(stack, cluster, tmp_path):
    symbols = new_symbols("SC")
    start = (int(time.time() * 1000) // MINUTE - 7) * MINUTE
    events = scripted_events(symbols, start, [Span(360)], steps_per_second=2.0, seed=21)
    quarter = len(events) // 4
    master, worker_pid = cluster
    env = spark_env(stack, tmp_path / "ckpt", CRYPTOMON_SPARK_MASTER=master, CRYPTOMON_SPARK_TRIGGER_SECONDS=1,
                    CRYPTOMON_SPARK_STARTING_OFFSETS=end_offsets(stack.kafka_bootstrap))  # fmt: skip
    job = Proc("spark-on-cluster", ["spark"], env)
    try:
        produce(stack.kafka_bootstrap, events[:quarter])
        wait_for(lambda: metric_rows(stack, symbols) > 0, 240, interval=1.0, what="first metrics")
        killed = executors(worker_pid)
        assert killed, "no executor of the job on the worker"
        for pid in killed:
            subprocess.run(["kill", "-9", str(pid)], check=True)
        produce(stack.kafka_bootstrap, events[quarter : 2 * quarter])  # the worker starts a new executor
        wait_for(lambda: [p for p in executors(worker_pid) if p not in killed], 120, interval=1.0,
                 what="a new executor")  # fmt: skip
        job.stop(signal.SIGKILL)  # and the driver goes too
    finally:
        job.stop()
    produce(stack.kafka_bootstrap, events[2 * quarter :])
    load_raw(stack, events, symbols)
    with running("spark-on-cluster-restarted", ["spark"], env) as restarted:
        wait_metrics_match_oracle(stack, symbols, 240, what="metrics equal to the oracle after both kills")
    assert "Traceback" not in restarted.log()
