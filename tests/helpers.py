"""Helpers for integration tests: processes, free ports, HTTP polling, reading topics back."""

from __future__ import annotations

import importlib.util
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
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cryptomon.kafka.clients import consumer_config
from cryptomon.simulator.market import Conditions
from cryptomon.simulator.scripted import Span, scripted_events

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# the recorded Binance captures beside the checkout (../shared/data/real), never copied into it
REAL_DATA = Path(
    os.environ.get("CRYPTOMON_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
)


def bench_module(name: str):
    """bench/<name>.py imported as a module (bench/ is not a package: its scripts import `common` beside them)."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_capture(name: str) -> Path:
    """A real capture's path; the test is skipped, saying why, when the folder is not there."""
    path = REAL_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not there (set CRYPTOMON_REAL_DATA to the folder holding the real captures)")
    return path


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; return its value. Fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# tests that write event times minutes ahead of the clock on purpose (to be later than anything else in the
# shared topics), and replays shifted to now at full speed, allow that much clock skew (see the contract)
FUTURE_SKEW = {"CRYPTOMON_MAX_CLOCK_SKEW_SECONDS": 3600}


def env_for(settings, **extra) -> dict:
    """The environment of a `cryptomon` process on the test stack. The order book is off unless a test
    turns it on (`CRYPTOMON_DEPTH`): the other stages' tests do not pay for snapshots and depth streams;
    the book's tests and `cryptomon up`'s first test run it."""
    env = {
        **os.environ,
        "CRYPTOMON_STATE_DIR": str(settings.state_dir),
        "CRYPTOMON_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CRYPTOMON_PG_DSN": settings.pg_dsn,
        "CRYPTOMON_DEPTH": "off",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def exchange_env(settings, port: int, **extra) -> dict:
    """env_for() a process that talks to the simulator (or a replay) on `port`: WebSocket, REST and a free
    ingestion health port."""
    return env_for(
        settings,
        **{
            "CRYPTOMON_BINANCE_WS_URL": f"ws://127.0.0.1:{port}/stream",
            "CRYPTOMON_BINANCE_REST_URL": f"http://127.0.0.1:{port}",
            "CRYPTOMON_INGEST_HEALTH_PORT": free_port(),
            **extra,
        },
    )


def producer(bootstrap: str) -> Producer:
    """A test producer with the ingestion's guarantees and the Java client's partitioner (key -> partition)."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )


def risk_scenario(risky: str, calm: str, base: int) -> list[tuple[str, dict]]:
    """17 scripted minutes from `base` (epoch ms): `risky` has a volatility burst (minute 11), a volume spike
    (minute 13) and a spread blow-out (15 s into minute 15); `calm` stays calm. Sorted by ingestion time."""
    calm_minute = Span(60)
    risk_spans = [calm_minute] * 11 + [
        Span(60, Conditions(volatility=150.0)),
        calm_minute,
        Span(60, Conditions(volume=12.0)),
        calm_minute,
        Span(15),
        Span(15, Conditions(spread=12.0)),
        Span(30),
    ]
    events = scripted_events(risky, base, risk_spans, steps_per_second=1.0, seed=5)
    events += scripted_events(calm, base, [Span(17 * 60)], steps_per_second=1.0, seed=6)
    events.sort(key=lambda e: e[1]["ingestion_timestamp"])
    return events


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
        self.consumer = Consumer(consumer_config(bootstrap))
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


DOCUMENTED = {  # field -> type, from Binance's spot API docs (market-data-endpoints)
    "ticker24hr": dict.fromkeys(
        ("symbol", "priceChange", "priceChangePercent", "weightedAvgPrice", "prevClosePrice", "lastPrice",
         "lastQty", "bidPrice", "bidQty", "askPrice", "askQty", "openPrice", "highPrice", "lowPrice", "volume",
         "quoteVolume"), str) | {"openTime": int, "closeTime": int, "firstId": int, "lastId": int, "count": int},
    "bookTicker": {"symbol": str, "bidPrice": str, "bidQty": str, "askPrice": str, "askQty": str},
    "trade": {"id": int, "price": str, "qty": str, "quoteQty": str, "time": int, "isBuyerMaker": bool,
              "isBestMatch": bool},
    "aggTrade": {"a": int, "p": str, "q": str, "f": int, "l": int, "T": int, "m": bool, "M": bool},
    "avgPrice": {"mins": int, "price": str, "closeTime": int},
    "price": {"symbol": str, "price": str},
    "depth": {"lastUpdateId": int, "bids": list, "asks": list},
    "streamTrade": {"e": str, "E": int, "s": str, "t": int, "p": str, "q": str, "T": int, "m": bool, "M": bool},
    "streamBookTicker": {"u": int, "s": str, "b": str, "B": str, "a": str, "A": str},
}  # fmt: skip


def shaped(obj: dict, kind: str) -> bool:
    spec = DOCUMENTED[kind]
    return set(obj) == set(spec) and all(type(obj[k]) is t for k, t in spec.items())
