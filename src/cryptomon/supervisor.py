"""`cryptomon up`: the whole pipeline in one command, supervised.

Starts, in order and waiting for each to be ready: the local services (unless told to use external
ones), topics and schema, the feed (live Binance, the simulator, or a replay), the ingestion, the worker,
the Spark job, the web view (`cryptomon dashboard`, unless its port is 0) and the alert notifier (when
CRYPTOMON_ALERT_EMAIL is set). A child that exits unexpectedly is restarted with backoff and reported. Ctrl-C or
SIGTERM stops the children in pipeline order (feed, ingestion, worker, Spark), each with SIGTERM so it
flushes what it buffered, then the services `up` itself started. The pids of the children are kept in
<state>/up.json while it runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from rich.table import Table

from cryptomon.backoff import Backoff
from cryptomon.errors import Unavailable
from cryptomon.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One process `up` runs: its command line, environment, log and health URL, restarts."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    popen: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0, reset_after=60.0))

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "cryptomon", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def stop(self, timeout: float = 45.0) -> None:
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs: killing it", self.name, timeout)
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)

    def health(self) -> tuple[int, dict | None]:
        if not self.health_url:
            return 0, None
        try:
            with urllib.request.urlopen(self.health_url, timeout=1.0) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 503 and the like still carry the health body
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, None
        except (OSError, ValueError):
            return 0, None


def sim_args(port: int, *options: str) -> list[str]:
    """The command line of `cryptomon feed sim` on `port` (options as `feed sim --help` lists them): what
    `up` starts, and what the tests and benchmarks start too."""
    return ["feed", "sim", "--port", str(port), *options]


def replay_args(captures: list, port: int, *options: str) -> list[str]:
    """The command line of `cryptomon feed replay` of `captures` on `port`."""
    return ["feed", "replay", *map(str, captures), "--port", str(port), *options]


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step (a file beside it, then os.replace): a reader of up.json
    (`cryptomon status`, a test) sees the old pids or the new ones, never a file cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


class Pipeline:
    """`cryptomon up`: the services and every process started in order, restarted when they die, stopped in order."""

    def __init__(
        self,
        settings: Settings,
        feed: str = "sim",
        scenario: str = "calm",
        replay: Path | None = None,
        sim_port: int = 9443,
        sim_rate: float = 50.0,
        sim_max_steps: int = 0,
        external_services: bool = False,
    ):
        self.settings = settings
        self.external = external_services
        self.stop_event = threading.Event()
        self.started_services: list = []
        self.children: list[Child] = []
        logs = settings.state_dir.resolve() / "logs"
        env = dict(os.environ)
        env.update(
            {
                "CRYPTOMON_STATE_DIR": str(settings.state_dir),
                "CRYPTOMON_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "CRYPTOMON_PG_DSN": settings.pg_dsn,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if feed in ("sim", "replay"):
            env["CRYPTOMON_BINANCE_WS_URL"] = f"ws://127.0.0.1:{sim_port}/stream"
            env["CRYPTOMON_BINANCE_REST_URL"] = f"http://127.0.0.1:{sim_port}"
            args = (
                sim_args(sim_port, "--rate", str(sim_rate), "--scenario", scenario, "--max-steps", str(sim_max_steps))
                if feed == "sim"
                else replay_args([replay], sim_port)
            )
            self.children.append(Child("feed", args, env, logs / "feed.log", f"http://127.0.0.1:{sim_port}/sim/stats"))
        health = settings.health_host if settings.health_host != "0.0.0.0" else "127.0.0.1"
        self.children += [
            Child(
                "ingest",
                ["ingest"],
                env,
                logs / "ingest.log",
                f"http://{health}:{settings.ingest_health_port}/health" if settings.ingest_health_port else None,
            ),
            Child(
                "worker",
                ["worker"],
                env,
                logs / "worker.log",
                f"http://{health}:{settings.worker_health_port}/health" if settings.worker_health_port else None,
            ),
            Child("spark", ["spark"], env, logs / "spark.log"),
        ]
        if settings.depth != "off":  # the order book: its stage beside the worker
            self.children.append(
                Child(
                    "book",
                    ["book"],
                    env,
                    logs / "book.log",
                    f"http://{health}:{settings.book_health_port}/health" if settings.book_health_port else None,
                )
            )
        self.children.append(
            Child(
                "retention",
                ["retention"],
                env,
                logs / "retention.log",
                f"http://{health}:{settings.retention_health_port}/health" if settings.retention_health_port else None,
            )
        )
        if settings.dashboard_port:
            self.children.append(
                Child(
                    "dashboard",
                    ["dashboard"],
                    env,
                    logs / "dashboard.log",
                    f"http://{health}:{settings.dashboard_port}/health",
                )
            )
        if settings.alert_email.strip():
            self.children.append(
                Child(
                    "notify",
                    ["notify"],
                    env,
                    logs / "notify.log",
                    f"http://{health}:{settings.notify_health_port}/health" if settings.notify_health_port else None,
                )
            )
        self.pid_file = settings.state_dir.resolve() / "up.json"
        self._rates: dict[str, tuple[float, int]] = {}

    # ---------------------------------------------------------------- lifecycle

    def start(self, report=lambda msg: None) -> None:
        from cryptomon.services.local import services, stack_up

        if not self.external:
            self.started_services = [svc for svc in services(self.settings) if not svc.running()]
            stack_up(self.settings, report)
        else:
            from cryptomon.db.migrate import migrate
            from cryptomon.kafka.topics import ensure_topics

            ensure_topics(self.settings.kafka_bootstrap, market_retention_seconds=self.settings.kafka_retention)
            migrate(self.settings.pg_dsn)
            report(
                f"using external services: Kafka {self.settings.kafka_bootstrap}, TimescaleDB {self.settings.pg_dsn.split('@')[-1]}"
            )
        for child in self.children:
            child.start()
            self._wait_ready(child)
            report(f"{child.name} started (pid {child.pid}, log {child.log_path})")
            self._write_pids()

    def _wait_ready(self, child: Child, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise Unavailable(
                    f"{child.name} exited at start (code {child.popen and child.popen.returncode}): see {child.log_path}"
                )
            if child.health_url is None or child.health()[0] in (200, 503):  # answering: up (503 = not yet connected)
                return
            time.sleep(0.2)
        raise Unavailable(f"{child.name} did not answer on {child.health_url} within {timeout:.0f}s")

    def supervise_once(self) -> list[str]:
        """Restart children that died; returns what happened (for the live view and the log)."""
        events = []
        now = time.monotonic()
        for child in self.children:
            if child.alive() or self.stop_event.is_set():
                continue
            if child.next_start == 0.0:
                code = child.popen.returncode if child.popen else None
                child.backoff.success(now - child.started_at)
                delay = child.backoff.next_delay()
                child.next_start = now + delay
                events.append(f"{child.name} exited (code {code}): restarting in {delay:.1f}s")
                log.warning(events[-1])
            elif now >= child.next_start:
                child.start()
                child.restarts += 1
                child.next_start = 0.0
                events.append(f"{child.name} restarted (pid {child.pid})")
                log.warning(events[-1])
                self._write_pids()
        return events

    def stop(self, report=lambda msg: None) -> None:
        self.stop_event.set()
        for child in self.children:  # pipeline order: upstream first, so downstream can drain
            if child.alive():
                child.stop()
                report(f"{child.name} stopped")
        for svc in reversed(self.started_services):
            svc.stop()
            report(f"{svc.name} stopped")
        self.pid_file.unlink(missing_ok=True)

    def _write_pids(self) -> None:
        pids = {c.name: c.popen.pid for c in self.children if c.popen} | {"up": os.getpid()}
        write_atomically(self.pid_file, json.dumps(pids))

    # ---------------------------------------------------------------- live view

    def snapshot(self) -> dict:
        """Figures for the status table: per process health, per symbol last VWAP / spread, alerts."""
        procs = {}
        now = time.monotonic()
        for child in self.children:
            status, body = child.health()
            count = None
            if body and child.name == "ingest":
                count = sum(body.get("messages_produced", {}).values())
            elif body and child.name == "worker":
                count = sum(body.get("rows_inserted", {}).values())
            rate = None
            if count is not None:
                last = self._rates.get(child.name)
                if last and now > last[0]:
                    rate = (count - last[1]) / (now - last[0])
                self._rates[child.name] = (now, count)
            procs[child.name] = {
                "alive": child.alive(),
                "pid": child.popen.pid if child.popen else None,
                "restarts": child.restarts,
                "http": status,
                "count": count,
                "rate": rate,
                "lag": (body or {}).get("consumer_lag_total"),
            }
        return {"processes": procs, "market": self._market()}

    def _market(self) -> dict:
        try:
            with psycopg.connect(self.settings.pg_dsn, connect_timeout=2) as conn:
                rows = conn.execute(
                    "SELECT s.symbol, t.vwap, sp.avg_spread,"
                    " (SELECT count(*) FROM trade_metrics x WHERE x.symbol = s.symbol AND x.window_start > now() - interval '1 hour'"
                    "  AND (x.volatility_alert OR x.volume_spike)),"
                    " (SELECT count(*) FROM spread_metrics y WHERE y.symbol = s.symbol AND y.window_start > now() - interval '1 hour'"
                    "  AND y.spread_warning)"
                    " FROM unnest(%s::text[]) AS s(symbol)"
                    " LEFT JOIN LATERAL (SELECT vwap FROM trade_metrics WHERE symbol = s.symbol ORDER BY window_start DESC LIMIT 1) t ON true"
                    " LEFT JOIN LATERAL (SELECT avg_spread FROM spread_metrics WHERE symbol = s.symbol ORDER BY window_start DESC LIMIT 1) sp ON true",
                    (list(self.settings.symbols),),
                ).fetchall()
                totals = conn.execute(
                    "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM book_ticker),"
                    " (SELECT count(*) FROM trade_metrics), (SELECT count(*) FROM spread_metrics)"
                ).fetchone()
        except psycopg.Error:
            return {"symbols": {}, "rows": None}
        return {
            "symbols": {r[0]: {"vwap": r[1], "spread": r[2], "anomalies": r[3], "spread_warnings": r[4]} for r in rows},
            "rows": dict(zip(("trades", "book_ticker", "trade_metrics", "spread_metrics"), totals or (), strict=True)),
        }


def status_table(snap: dict) -> Table:
    """The live view: one table for the processes, one for the market, side by side in a grid."""
    procs = Table("process", "state", "pid", "restarts", "total", "per s", "lag", title="pipeline")
    for name, p in snap["processes"].items():
        state = "[green]running[/]" if p["alive"] else "[red]down[/]"
        if p["alive"] and p["http"] == 503:
            state = "[yellow]unhealthy[/]"
        procs.add_row(
            name,
            state,
            str(p["pid"] or "-"),
            str(p["restarts"]),
            "-" if p["count"] is None else f"{p['count']:,}",
            "-" if p["rate"] is None else f"{p['rate']:,.0f}",
            "-" if p["lag"] is None else str(p["lag"]),
        )
    market = Table("symbol", "last VWAP", "avg spread", "anomalies 1h", "spread warnings 1h", title="market")
    for sym, m in snap["market"]["symbols"].items():
        market.add_row(
            sym,
            "-" if m["vwap"] is None else f"{m['vwap']:.4f}",
            "-" if m["spread"] is None else f"{m['spread']:.6f}",
            str(m["anomalies"]),
            str(m["spread_warnings"]),
        )
    rows = snap["market"].get("rows")
    caption = " · ".join(f"{k}: {v:,}" for k, v in rows.items()) if rows else "database unreachable"
    grid = Table.grid(padding=(0, 2))
    grid.add_row(procs, market)
    grid.caption = caption
    return grid
