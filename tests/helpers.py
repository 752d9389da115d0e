"""Helpers for integration tests: processes, free ports, HTTP polling, reading topics back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import wait_for

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(settings, **extra) -> dict:
    env = {
        **os.environ,
        "CRYPTOMON_STATE_DIR": str(settings.state_dir),
        "CRYPTOMON_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CRYPTOMON_PG_DSN": settings.pg_dsn,
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """A cryptomon subprocess whose output goes to test-artifacts/<name>.log."""

    def __init__(self, name: str, args: list[str], env: dict):
        ARTIFACTS.mkdir(exist_ok=True)
        self.env = env
        self.log_path = ARTIFACTS / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with open(self.log_path, "wb") as out:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "cryptomon", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


@contextmanager
def running(name: str, args: list[str], env: dict):
    proc = Proc(name, args, env)
    try:
        yield proc
    finally:
        proc.stop()


def get_json(url: str) -> tuple[int, dict | None]:
    try:
        r = httpx.get(url, timeout=2)
        return r.status_code, r.json()
    except (httpx.HTTPError, ValueError):
        return 0, None


def post(url: str) -> dict:
    r = httpx.post(url, timeout=5)
    r.raise_for_status()
    return r.json()


def wait_json(url: str, predicate, timeout: float = 60.0, what: str = "") -> dict:
    """Poll a JSON endpoint until predicate(body) holds; returns the body."""
    last = {}

    def check():
        nonlocal last
        _, body = get_json(url)
        if body is not None:
            last = body
            return predicate(body)
        return False

    try:
        wait_for(check, timeout=timeout, interval=0.1, what=what or url)
    except BaseException:
        print("last body:", last)
        raise
    return last


class TopicTap:
    """Reads back what was produced to topics after the tap was created."""

    def __init__(self, bootstrap: str, topics: list[str]):
        self.bootstrap = bootstrap
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"tap-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        md = self.consumer.list_topics(timeout=10)
        self.start: list[TopicPartition] = []
        for topic in topics:
            for p in md.topics[topic].partitions:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                self.start.append(TopicPartition(topic, p, high))
        self.consumer.assign(self.start)
        self.messages: list = []

    def read(self, until, timeout: float = 60.0) -> list:
        """Consume until until(messages) is true (or timeout); returns the messages so far."""
        deadline = time.monotonic() + timeout
        while not until(self.messages) and time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error() is None:
                    self.messages.append(msg)
        return self.messages

    def drain(self, quiet: float = 1.0) -> list:
        """Read until no new message arrived for `quiet` seconds."""
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < quiet:
            for msg in self.consumer.consume(1000, 0.1):
                if msg.error() is None:
                    self.messages.append(msg)
            if len(self.messages) != last_count:
                last_count, last_change = len(self.messages), time.monotonic()
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def decode(msg) -> dict:
    return orjson.loads(msg.value())
