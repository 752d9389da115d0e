"""Raising a topic's replication factor, which Kafka does only through a partition reassignment: the plan
(which brokers get the new replicas) is computed here, and Kafka's own ReassignPartitionsCommand (from the
jars setup installed) carries it out and is asked until it is done."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cryptomon.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)

TOOL = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"


def plan(current: dict[str, dict[int, list[int]]], brokers: list[int], factor: int) -> dict:
    """Kafka's reassignment JSON for every partition with fewer than `factor` replicas: its replicas kept
    (the leader first), the missing ones taken from the other brokers in turn, so that they spread."""
    if factor > len(brokers):
        raise ConfigError(f"replication factor {factor} needs {factor} brokers; the cluster has {len(brokers)}")
    moves, turn = [], 0
    for topic in sorted(current):
        for partition in sorted(current[topic]):
            replicas = list(current[topic][partition])
            others = [b for b in sorted(brokers) if b not in replicas]
            while len(replicas) < factor:
                replicas.append(others[turn % len(others)])
                others.remove(replicas[-1])
                turn += 1
            if replicas != current[topic][partition]:
                moves.append({"topic": topic, "partition": partition, "replicas": replicas})
    return {"version": 1, "partitions": moves}


def reassign(bootstrap: str, kafka_jars: Path, reassignment: dict, timeout: float = 300.0) -> None:
    """Execute `reassignment` with Kafka's tool and wait until every partition has its new replicas."""
    if not reassignment["partitions"]:
        return
    java = shutil.which("java")
    if not java or not any(kafka_jars.glob("kafka-tools-*.jar")):
        raise ConfigError(f"raising replication needs java and Kafka's jars in {kafka_jars}: run scripts/setup.sh")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(reassignment, f)
    command = [java, "-Xmx256m", "-cp", f"{kafka_jars}/*", TOOL, "--bootstrap-server", bootstrap,
               "--reassignment-json-file", f.name]  # fmt: skip
    try:
        _run([*command, "--execute"])
        deadline = time.monotonic() + timeout
        while "is still in progress" in (out := _run([*command, "--verify"])):
            if time.monotonic() > deadline:
                raise Unavailable(f"reassignment not done within {timeout:.0f}s: {out.strip()[-300:]}")
            time.sleep(1.0)
        log.info("replicas added to %d partitions", len(reassignment["partitions"]))
    finally:
        Path(f.name).unlink(missing_ok=True)


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise Unavailable(f"{TOOL} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout
