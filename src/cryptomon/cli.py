"""`cryptomon`: the one command-line entry point."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cryptomon.errors import ConfigError, CryptomonError
from cryptomon.settings import SettingsError, get_settings
from cryptomon.stopping import stop_on_signals

console = Console(stderr=True)
app = typer.Typer(no_args_is_help=True, add_completion=False, help="Real-time crypto market monitoring pipeline.")
services_app = typer.Typer(no_args_is_help=True, help="The local stack: Kafka (KRaft) and TimescaleDB, no Docker.")
db_app = typer.Typer(no_args_is_help=True, help="TimescaleDB schema.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics.")
app.add_typer(services_app, name="services")
app.add_typer(db_app, name="db")
app.add_typer(topics_app, name="topics")
grafana_app = typer.Typer(no_args_is_help=True, help="Grafana provisioning as code.")
app.add_typer(grafana_app, name="grafana")
feed_app = typer.Typer(no_args_is_help=True, help="Exchange feeds: a Binance-compatible simulator, replay, record.")
app.add_typer(feed_app, name="feed")
archive_app = typer.Typer(no_args_is_help=True, help="The Parquet archive of dropped chunks.")
app.add_typer(archive_app, name="archive")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # one INFO line per Python<->JVM call otherwise


@app.callback()
def _configure() -> None:
    """Before any command: read the settings (a bad one stops here, naming it) and set up logging."""
    setup_logging(get_settings().log_level)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@services_app.command("up")
def services_up(
    kafka_nodes: int = typer.Option(
        0, "--kafka-nodes", help="Nodes of the local Kafka cluster (CRYPTOMON_KAFKA_NODES)."
    ),
    spark_cluster: bool = typer.Option(
        False,
        "--spark-cluster",
        help="Also a Spark standalone master and worker (CRYPTOMON_SPARK_MASTER=spark://127.0.0.1:7077).",
    ),
) -> None:
    """Start Kafka and TimescaleDB (if not running), then create the topics and apply the schema."""
    from cryptomon.services.local import ServiceError, stack_up

    settings = get_settings()
    if kafka_nodes:
        settings = settings.model_copy(update={"kafka_nodes": kafka_nodes})
    try:
        with console.status("starting the local stack"):
            stack_up(settings, report=lambda msg: console.print(f"[green]✓[/] {msg}"))
            if spark_cluster:
                from cryptomon.services.spark_cluster import spark_cluster as daemons

                for daemon in daemons(settings):
                    daemon.start()
                    console.print(f"[green]✓[/] {daemon.name} on {daemon.address} (master {daemon.master_url})")
    except ServiceError as exc:
        raise fail(str(exc)) from None


@services_app.command("down")
def services_down() -> None:
    """Stop Kafka and TimescaleDB cleanly (their data is kept)."""
    from cryptomon.services.local import stack_down
    from cryptomon.services.spark_cluster import spark_cluster

    with console.status("stopping the local stack"):
        for daemon in reversed(spark_cluster(get_settings())):
            if daemon.running():
                daemon.stop()
                console.print(f"[green]✓[/] {daemon.name} stopped")
        stack_down(get_settings(), report=lambda msg: console.print(f"[green]✓[/] {msg}"))


@services_app.command("status")
def services_status() -> None:
    """Show what runs where, and Kafka's under-replicated partitions. Exit code 0 when everything runs, 3 otherwise."""
    from cryptomon.services.local import services, under_replicated

    table = Table("service", "state", "address", "pid", "data", "log")
    for column in table.columns:
        column.overflow = "fold"
    all_up = True
    for svc in services(get_settings()):
        st = svc.status()
        all_up &= st.running
        table.add_row(
            st.name,
            "[green]running[/]" if st.running else "[red]stopped[/]",
            st.address,
            str(st.pid or "-"),
            str(st.data_dir),
            str(st.log_file),
        )
    Console().print(table)
    if all_up:
        lagging = under_replicated(get_settings().kafka_bootstrap)
        console.print(
            f"under-replicated partitions: {len(lagging)}" + (f" ({', '.join(lagging[:10])})" if lagging else "")
        )
    if not all_up:
        raise typer.Exit(3)


@db_app.command("migrate")
def db_migrate(
    roles: bool = typer.Option(False, "--roles", help="Then create the application and read-only roles."),
) -> None:
    """Apply pending schema migrations (idempotent); with --roles, also the least-privilege roles."""
    from cryptomon.db.migrate import migrate
    from cryptomon.db.roles import ensure_roles

    s = get_settings()
    applied = migrate(s.pg_dsn)
    console.print(f"[green]✓[/] {'applied ' + str(applied) if applied else 'schema up to date'}")
    if roles:
        for line in ensure_roles(s.pg_dsn, s.db_app_user, s.db_app_password.get_secret_value(), s.db_reader_user,
                                 s.db_reader_password.get_secret_value()):  # fmt: skip
            console.print(f"[green]✓[/] {line}")


@topics_app.command("ensure")
def topics_ensure(
    reassign: bool = typer.Option(False, "--reassign", help="Raise the replication of under-replicated topics."),
) -> None:
    """Create missing topics and apply their configuration (idempotent); report, or with --reassign raise,
    the replication of topics below the plan."""
    from cryptomon.kafka.security import librdkafka_security
    from cryptomon.kafka.topics import ensure_topics

    settings = get_settings()
    for topic, result in ensure_topics(
        settings.kafka_bootstrap,
        security=librdkafka_security(settings),
        replication_factor=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
        reassign_with=settings.deps_dir / "kafka" if reassign else None,
        market_retention_seconds=settings.kafka_retention,
    ).items():
        console.print(f"[green]✓[/] {topic}: {result}")


@app.command("up")
def up(
    feed: str = typer.Option("binance", help="binance (the live exchange), sim (the simulator) or replay."),
    scenario: str = typer.Option("calm", help="Simulator scenario (with --feed sim): calm, risk, faults."),
    replay: Path = typer.Option(None, exists=True, dir_okay=False, help="Capture to replay (with --feed replay)."),
    sim_port: int = typer.Option(9443, help="Port of the simulator / replay server."),
    sim_rate: float = typer.Option(50.0, help="Simulator market steps per second."),
    sim_max_steps: int = typer.Option(0, help="Stop the simulator after this many steps per symbol (0: never)."),
    external: bool = typer.Option(
        False,
        "--external",
        help="Use the Kafka/TimescaleDB of the settings (e.g. docker compose's) instead of starting local ones.",
    ),
    live: bool = typer.Option(True, help="Live status table (off: a status line every 10 s)."),
) -> None:
    """Run the whole pipeline, supervised, until Ctrl-C: services, feed, ingestion, worker, Spark."""
    from rich.live import Live

    from cryptomon.supervisor import Pipeline, status_table

    if feed not in ("binance", "sim", "replay"):
        raise fail("--feed is binance, sim or replay", 2)
    if feed == "replay" and replay is None:
        raise fail("--feed replay needs --replay FILE", 2)
    s = get_settings()
    pipeline = Pipeline(
        s,
        feed=feed,
        scenario=scenario,
        replay=replay,
        sim_port=sim_port,
        sim_rate=sim_rate,
        sim_max_steps=sim_max_steps,
        external_services=external,
    )
    stop_on_signals(pipeline.stop_event)
    report = lambda msg: console.print(f"[green]✓[/] {msg}")  # noqa: E731
    try:
        with console.status("starting the pipeline"):
            pipeline.start(report)
        console.print("[bold]running[/]: Ctrl-C stops everything")
        if live and sys.stdout.isatty():
            with Live(status_table(pipeline.snapshot()), console=Console(), refresh_per_second=1) as view:
                while not pipeline.stop_event.wait(1.0):
                    for event in pipeline.supervise_once():
                        view.console.print(f"[yellow]![/] {event}")
                    view.update(status_table(pipeline.snapshot()))
        else:
            last = 0.0
            while not pipeline.stop_event.wait(1.0):
                for event in pipeline.supervise_once():
                    console.print(f"[yellow]![/] {event}")
                if time.monotonic() - last >= 10:
                    last = time.monotonic()
                    snap = pipeline.snapshot()
                    console.print(
                        " | ".join(
                            f"{n}: {'up' if p['alive'] else 'DOWN'}"
                            + ("" if p["count"] is None else f" {p['count']:,}")
                            for n, p in snap["processes"].items()
                        ),
                        soft_wrap=True,
                    )
    except CryptomonError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        pipeline.stop(report)
        raise typer.Exit(1) from None
    console.print("stopping")
    pipeline.stop(report)


@app.command("ingest")
def ingest() -> None:
    """Binance WebSocket -> Kafka (health and metrics on CRYPTOMON_INGEST_HEALTH_PORT)."""
    from cryptomon.ingestion.service import main as ingest_main

    ingest_main(get_settings())


@app.command("notify")
def notify(
    once: bool = typer.Option(False, "--once", help="Evaluate the alert rules once, mail the changes, exit."),
) -> None:
    """Alert e-mails without Grafana: the same alert rules, every CRYPTOMON_ALERT_INTERVAL_SECONDS, over SMTP."""
    from cryptomon.alerts.notifier import Notifier
    from cryptomon.alerts.notifier import main as notify_main

    s = get_settings()
    if not s.alert_email.strip():
        raise fail("CRYPTOMON_ALERT_EMAIL is empty: set the address the alert e-mails go to", 2)
    if once:
        for t in Notifier(s).run_once():
            console.print(f"{'FIRING' if t.firing else 'resolved'}: {t.rule.title} {t.symbol} ({t.value:g})")
        return
    notify_main(s)


@app.command("dashboard")
def dashboard(port: int = typer.Option(None, help="Port (default CRYPTOMON_DASHBOARD_PORT).")) -> None:
    """Web view of the Market Overview and Risk Monitor dashboards (same SQL as Grafana's), refreshing itself."""
    from cryptomon.web.server import main as web_main

    web_main(get_settings(), port)


@app.command("worker")
def worker() -> None:
    """Kafka -> TimescaleDB (health and metrics on CRYPTOMON_WORKER_HEALTH_PORT)."""
    from cryptomon.worker.service import main as worker_main

    worker_main(get_settings())


@app.command("book")
def book() -> None:
    """binance.depth -> order books -> order_book_snapshots (health and metrics on CRYPTOMON_BOOK_HEALTH_PORT)."""
    from cryptomon.book.service import main as book_main

    book_main(get_settings())


@app.command("retention")
def retention(
    once: bool = typer.Option(False, "--once", help="One pass over the tables, print what it did, exit."),
) -> None:
    """Old chunks archived to Parquet, verified and dropped; dead letters pruned (CRYPTOMON_RETENTION_*)."""
    from cryptomon.retention.loop import Retention
    from cryptomon.retention.loop import main as retention_main

    s = get_settings()
    if not once:
        retention_main(s)
        return
    report = Retention(s).run_once()
    if report.get("skipped"):
        console.print(f"pass skipped: {report['skipped']}")
        raise typer.Exit(1)
    for table, done in report["tables"].items():
        console.print(f"{table}: {len(done['dropped'])} chunks dropped, {len(done['kept'])} kept on error, "
                      f"{done['chunks'] - len(done['dropped'])} left; horizon {done['horizon']}"
                      + (f"; held: {done['held']}" if "held" in done else ""))  # fmt: skip
    for table, n in report["pruned"].items():
        console.print(f"{table}: {n} rows pruned")
    if any(done["kept"] for done in report["tables"].values()):
        raise typer.Exit(1)


@archive_app.command("list")
def archive_list(root: Path = typer.Option(None, help="Archive folder (default CRYPTOMON_ARCHIVE_DIR).")) -> None:
    """The archive's files: table, day, rows, size, the chunk's time range."""
    from cryptomon.retention import archive

    root = root or get_settings().archive_path
    table = Table("table", "day", "rows", "MiB", "from", "to", "file")
    total = 0
    for path in archive.files(root):
        info, expected = archive.info_of(path), archive.expected_of(path)
        size = path.stat().st_size
        total += size
        table.add_row(info.get("table", "?"), path.parent.name.removeprefix("date="), f"{expected.rows:,}",
                      f"{size / (1 << 20):.1f}", info.get("range_start", ""), info.get("range_end", ""),
                      path.name)  # fmt: skip
    console.print(table)
    console.print(f"{root}: {total / (1 << 20):.1f} MiB")


@archive_app.command("verify")
def archive_verify(
    paths: list[Path] = typer.Argument(None, help="Files to verify (default: every file of the archive)."),
) -> None:
    """Read every file back whole: rows, id range and exact sum as the chunk held them. Exit 1 on a mismatch."""
    from cryptomon.retention import archive

    targets = paths or list(archive.files(get_settings().archive_path))
    bad = 0
    for path in targets:
        try:
            found = archive.verify(path)
            console.print(f"[green]ok[/] {path}: {found.rows:,} rows")
        except archive.ArchiveMismatch as exc:
            bad += 1
            console.print(f"[red]BAD[/] {exc}")
    console.print(f"{len(targets) - bad} of {len(targets)} files verified")
    if bad:
        raise typer.Exit(1)


@app.command("spark")
def spark_job(
    available_now: bool = typer.Option(
        False, "--available-now", help="Process what Kafka holds now, then stop (backfills, tests)."
    ),
) -> None:
    """Spark Structured Streaming metrics: Kafka -> trade_metrics, spread_metrics (Spark UI on :4040)."""
    from cryptomon.spark.streaming_job import main as spark_main

    spark_main(get_settings(), {"availableNow": True} if available_now else None)


@feed_app.command("sim")
def feed_sim(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(9443, help="Port for both the WebSocket and the REST API."),
    rate: float = typer.Option(
        50.0, help="Market steps per second over all symbols (each step: 1-3 trades, 1 aggTrade, 1 bookTicker)."
    ),
    seed: int = typer.Option(1, help="Random seed: the same seed gives the same market."),
    scenario: str = typer.Option("calm", help="calm, risk or faults (see cryptomon/simulator/scenarios.py)."),
    max_steps: int = typer.Option(0, help="Stop generating after this many steps per symbol (0: never)."),
    market: str = typer.Option(
        "symbols", help="symbols (CRYPTOMON_SYMBOLS) or whole: ~400 TRADING USDT pairs priced 1e-8 to 1e5."
    ),
    whole_size: int = typer.Option(400, help="TRADING symbols of --market whole."),
    wait_for_client: bool = typer.Option(True, help="Start the market when the first WebSocket client connects."),
    book_updates: float = typer.Option(0.0, help="Extra bookTicker-only updates per market step."),
    history: int = typer.Option(0, help="Trades and aggTrades kept per symbol for REST (0: 10 min, >= 2M in all)."),
    max_age: float = typer.Option(86400.0, help="Seconds after which a WebSocket connection is cut (Binance: 24 h)."),
    max_streams: int = typer.Option(1024, help="Streams per connection (Binance: 1,024)."),
    max_messages: int = typer.Option(5, help="Incoming messages per second per connection (Binance: 5)."),
    max_connections: int = typer.Option(300, help="New connections per IP per 5 minutes (Binance: 300)."),
    weight_limit: int = typer.Option(6000, help="REST request weight per window (Binance: 6,000 per minute)."),
    weight_window: float = typer.Option(60.0, help="Seconds of the request-weight window (Binance: 60)."),
    ban_seconds: float = typer.Option(120.0, help="First 418 ban after calls inside Retry-After (Binance: 120)."),
    tls_cert: Path = typer.Option(None, exists=True, dir_okay=False, help="Serve wss:// and https:// (PEM)."),
    tls_key: Path = typer.Option(None, exists=True, dir_okay=False, help="Private key of --tls-cert (PEM)."),
) -> None:
    """Serve a Binance-compatible exchange: point CRYPTOMON_BINANCE_WS_URL at ws://HOST:PORT/stream and
    CRYPTOMON_BINANCE_REST_URL at http://HOST:PORT."""
    from cryptomon.simulator.engine import Simulator, run_forever
    from cryptomon.simulator.instruments import whole_market
    from cryptomon.simulator.scenarios import SCENARIOS
    from cryptomon.simulator.ws_protocol import SimLimits

    s = get_settings()
    if scenario not in SCENARIOS:
        raise fail(f"unknown scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}", 2)
    if market not in ("symbols", "whole"):
        raise fail("--market is symbols or whole", 2)
    instruments = whole_market(whole_size) if market == "whole" else None
    symbols = tuple(instruments) if instruments else s.symbols
    limits = SimLimits(max_streams=max_streams, max_messages=max_messages, max_connections=max_connections,
                       max_age=max_age, weight_limit=weight_limit, weight_window=weight_window,
                       ban_seconds=ban_seconds)  # fmt: skip
    sim = Simulator(symbols, rate=rate, seed=seed, scenario=scenario, max_steps=max_steps or None,
                    instruments=instruments, limits=limits, history=history or None, wait_for_client=wait_for_client,
                    book_updates=book_updates)  # fmt: skip
    context = _tls(tls_cert, tls_key)
    tls = "s" if context else ""
    console.print(f"exchange simulator: ws{tls}://{host}:{port}/stream  http{tls}://{host}:{port}/api/v3  "
                  f"({len(sim.symbols)} symbols, {scenario})")  # fmt: skip
    run_forever(sim, host, port, context)


@feed_app.command("replay")
def feed_replay(
    files: list[Path] = typer.Argument(
        ..., exists=True, dir_okay=False,
        help="Captures: JSON lines (feed record), hftbacktest's `<ns> <frame>` lines, cryptofeed's .ws "
        "recordings (plain or gzip), or Binance CSV dumps; several are merged by receive time.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(9443, help="Port for both the WebSocket and the REST API."),
    rate: float = typer.Option(200.0, help="Events per second (0: as fast as the client reads); see --speed."),
    speed: float = typer.Option(
        0.0, help="Replay at this many times the recorded pace (captures with receive times; 0: use --rate)."
    ),
    shift_to_now: bool = typer.Option(
        False, "--shift-to-now", help="Move event times by whole minutes so the first lands in this minute."
    ),
    shift_minutes: int = typer.Option(0, help="Move event times by this many minutes (instead of --shift-to-now)."),
    symbol: str = typer.Option("", help="Symbol of a CSV dump whose file name does not start with it."),
    tls_cert: Path = typer.Option(None, exists=True, dir_okay=False, help="Serve wss:// and https:// (PEM)."),
    tls_key: Path = typer.Option(None, exists=True, dir_okay=False, help="Private key of --tls-cert (PEM)."),
) -> None:  # fmt: skip
    """Serve recorded feeds through the simulator's Binance-compatible server."""
    import time

    from cryptomon.simulator.engine import Simulator, run_forever
    from cryptomon.simulator.replay import capture_symbols, first_event_ms, first_snapshots, read_captures
    from cryptomon.simulator.replay import shift_to_now as shift

    sym = symbol or None
    try:
        symbols = capture_symbols(files, sym)
        shift_ms = shift(first_event_ms(files, sym), time.time_ns() // 1_000_000) if shift_to_now else 0
        shift_ms = shift_ms or shift_minutes * 60_000
    except CryptomonError as exc:
        raise fail(str(exc), 2) from None
    sim = Simulator(symbols, rate=rate, speed=speed, source=read_captures(files, sym, shift_ms, snapshots=True),
                    snapshots=first_snapshots(files, sym))  # fmt: skip
    names = ", ".join(str(f) for f in files)
    context = _tls(tls_cert, tls_key)
    tls = "s" if context else ""
    console.print(f"replaying {names} ({', '.join(symbols)}), event times {shift_ms // 60_000:+d} min: "
                  f"ws{tls}://{host}:{port}/stream  http{tls}://{host}:{port}/api/v3")  # fmt: skip
    run_forever(sim, host, port, context)


def _tls(cert: Path | None, key: Path | None):
    if not cert:
        return None
    if not key:
        raise fail("--tls-cert needs --tls-key", 2)
    from cryptomon.simulator.tls import server_context

    return server_context(cert, key)


@feed_app.command("record")
def feed_record(
    out: Path = typer.Argument(..., help="JSON-lines file to append to."),
    max_messages: int = typer.Option(0, help="Stop after this many frames (0: no limit)."),
    seconds: float = typer.Option(0.0, help="Stop after this many seconds (0: no limit)."),
) -> None:
    """Capture the configured stream (CRYPTOMON_BINANCE_WS_URL, CRYPTOMON_SYMBOLS) to a file for replay."""
    import asyncio

    from cryptomon.binance.streams import combined_stream_url, stream_names
    from cryptomon.simulator.replay import record

    s = get_settings()
    n = asyncio.run(
        record(
            combined_stream_url(s.binance_ws_url, stream_names(s.symbols)), out, max_messages or None, seconds or None
        )
    )
    console.print(f"[green]✓[/] {n} frames recorded to {out}")


@grafana_app.command("generate")
def grafana_generate(
    check: bool = typer.Option(False, "--check", help="Only report files that differ from what would be generated."),
    out: Path = typer.Option(None, help="The grafana/ folder (default: the checkout's)."),
) -> None:
    """Write grafana/ (datasource, dashboards, alert rules) from src/cryptomon/dashboards/."""
    from cryptomon.dashboards.grafana import stale, write
    from cryptomon.paths import project_root

    root = out or ((project_root() or Path.cwd()) / "grafana")
    if check:
        differing = stale(root)
        if differing:
            raise fail("stale Grafana files (run `cryptomon grafana generate`): " + ", ".join(differing))
        console.print("[green]✓[/] grafana/ is up to date")
        return
    changed = write(root)
    console.print(f"[green]✓[/] {len(changed)} file(s) written" + (": " + ", ".join(changed) if changed else ""))


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (passwords masked)."""
    from urllib.parse import urlsplit

    s = get_settings()
    table = Table("setting", "value")
    for name, value in s.model_dump().items():
        if name == "pg_dsn" and urlsplit(value).password:
            value = value.replace(f":{urlsplit(value).password}@", ":***@")
        elif name == "binance_api_key" and value:
            value = "***"
        table.add_row(f"CRYPTOMON_{name.upper()}", ",".join(value) if isinstance(value, tuple) else str(value))
    Console().print(table)


def main() -> None:
    try:
        app()
    except SettingsError as exc:
        console.print(f"[bold red]invalid configuration:[/]\n{exc}")
        sys.exit(2)
    except ConfigError as exc:  # an argument, a file or the installation: one line, exit code 2
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except CryptomonError as exc:  # a dependency that did not come up, input that cannot be used
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
