"""The one settings module: every knob of cryptomon, read from `CRYPTOMON_*` env vars or `.env`.

Each field's description is the documentation; the README's configuration table lists them all
(a unit test keeps the two in step). A bad value stops the program at start with a message that
names the setting (see `load_settings`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cryptomon.errors import ConfigError
from cryptomon.paths import default_deps_dir

ENV_PREFIX = "CRYPTOMON_"
DAY = 86_400
# Kafka keeps the market topics 7 days (kafka/topics.conf; CRYPTOMON_KAFKA_RETENTION overrides): Spark can
# recompute metric windows that far back, so metric chunks may be dropped only past that
KAFKA_MARKET_RETENTION_SECONDS = 7 * DAY
_AGE = re.compile(r"^(\d{1,9})\s*([smhdw]?)$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
AGE_FIELDS = (
    "kafka_retention",
    "retention_trades",
    "retention_book_ticker",
    "retention_order_book",
    "retention_metrics",
    "retention_dead_letters",
    "retention_stream_progress",
)
_SYMBOL = re.compile(r"^([A-Z0-9]{2,20}|[A-Z0-9*?]{1,20}|ALL)$")  # a symbol, a pattern (*USDT) or ALL


class Settings(BaseSettings):
    """Every `CRYPTOMON_*` setting, validated at start; a bad value is a SettingsError naming the variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        ("BTCUSDT", "ETHUSDT", "BNBUSDT"),
        description="Comma-separated Binance symbols to follow (case-insensitive); patterns such as *USDT, or "
        "ALL, are resolved from exchangeInfo (TRADING symbols) and followed as the market lists and delists.",
    )
    binance_ws_url: str = Field(
        "wss://stream.binance.com:9443/stream",
        description="Binance combined-stream WebSocket endpoint (point it at `cryptomon feed sim` offline).",
    )
    binance_rest_url: str = Field(
        "https://api.binance.com", description="Binance REST base URL, used to backfill missed trades."
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers; the local broker listens on the first one."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client (producer, consumers, admin, Spark) talks to the brokers."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)."
    )
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (never logged or printed).")
    kafka_ssl_ca_file: str = Field(
        "", description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL)."
    )
    kafka_controller_port: int = Field(
        9093, ge=1, le=65535, description="KRaft controller port of the local single-node broker."
    )
    kafka_nodes: int = Field(
        1,
        ge=1,
        le=9,
        description="Nodes (broker + controller each) of the local Kafka cluster `services up` starts; node i "
        "listens on the bootstrap port + 2(i-1) and the controller port + 2(i-1).",
    )
    kafka_replication_factor: int = Field(
        0, ge=0, description="Replicas of every topic; 0: min(3, brokers in the cluster)."
    )
    kafka_min_insync_replicas: int = Field(
        0, ge=0, description="min.insync.replicas of every topic; 0: 2 with 3 replicas, else 1."
    )
    kafka_heap: str = Field("512m", description="JVM heap (-Xmx) of the local Kafka broker.")
    kafka_retention: int = Field(
        0,
        description="How long Kafka keeps the market topics (trades, book_ticker, depth), applied by `topics ensure` "
        "and `services up`: seconds or 12h, 2d; 0: topics.conf's 7 days.",
    )
    pg_dsn: str = Field(
        "postgresql://cryptomon:cryptomon@127.0.0.1:5433/cryptomon",
        description="TimescaleDB connection string. The password shown is the local-only default; "
        "set your own outside a development machine.",
    )
    db_app_user: str = Field("cryptomon_app", description="`db migrate --roles`: the role the processes write as.")
    db_app_password: SecretStr = Field(SecretStr(""), description="Password of the application role (never printed).")
    db_reader_user: str = Field(
        "cryptomon_reader", description="`db migrate --roles`: the read-only role of dashboards."
    )
    db_reader_password: SecretStr = Field(SecretStr(""), description="Password of the read-only role (never printed).")
    pg_bin_dir: Path = Field(
        Path("/usr/lib/postgresql/15/bin"),
        description="Where `initdb`, `pg_ctl` and `postgres` live for the local TimescaleDB.",
    )
    state_dir: Path = Field(
        Path(".cryptomon"),
        description="Folder holding the local stack's data and logs (Kafka log dirs, PostgreSQL cluster).",
    )
    disk_min_free_mb: int = Field(
        100,
        ge=0,
        description="Below this many MB free on the state folder's disk the ingestion disconnects and the worker "
        "stops inserting until there is room again, so that Kafka and PostgreSQL never hit a full "
        "disk (0: off).",
    )
    deps_dir: Path = Field(
        default_factory=default_deps_dir,
        description="Folder where `scripts/setup.sh` put the Kafka and Spark connector jars.",
    )
    log_level: str = Field("INFO", description="Log level of every cryptomon process.")
    http_allowed_hosts: str = Field(
        "",
        description="Host names (comma-separated) the HTTP endpoints answer besides loopback and the health host; "
        "`*`: any. Others get 421 (a page elsewhere cannot reach them through DNS rebinding).",
    )
    health_host: str = Field(
        "127.0.0.1", description="Address the health/metrics endpoints bind to (0.0.0.0 to expose them)."
    )
    # ---- ingestion
    binance_api_key: str = Field(
        "", description="Optional Binance API key, sent with the REST backfill requests (never logged)."
    )
    ingest_health_port: int = Field(8081, ge=0, le=65535, description="Ingestion's /health and /metrics port.")
    resume_max_gap: int = Field(
        1_000_000,
        ge=0,
        description="At start, continue each symbol's trade/aggTrade ids after the last ones in Kafka, so that "
        "trades streamed while the ingestion was down are backfilled over REST, when no more than "
        "this many ids are missing (0: start afresh).",
    )
    symbols_refresh: float = Field(
        300.0, gt=0, description="Seconds between two resolutions of symbol patterns (*USDT, ALL) from exchangeInfo."
    )
    ingest_instance: str = Field(
        "0/1",
        description="i/N: this ingestion is instance i of N sharing the symbols (each symbol goes to exactly one "
        "instance, by rendezvous hashing).",
    )
    ws_streams_per_connection: int = Field(
        1024, ge=3, le=1024, description="Streams per WebSocket connection (Binance allows at most 1,024)."
    )
    rest_weight_budget: int = Field(
        3000,
        ge=10,
        description="REST request weight per minute the ingestion may spend (Binance allows 6,000 per IP; half "
        "leaves room for other clients on the IP and for windows that do not line up; more than 6,000 only "
        "makes sense against the simulator with a higher limit).",
    )
    backfill_concurrency: int = Field(4, ge=1, le=64, description="Gaps backfilled at the same time.")
    depth_snapshot_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="While the backfill has gaps to fill, the share of the REST weight budget depth snapshots "
        "may take in a minute (the backfill keeps the rest; 1: first come, first served).",
    )
    depth: Literal["100ms", "1000ms", "off"] = Field(
        "100ms",
        description="The order book: follow `<symbol>@depth@100ms` (`100ms`) or `<symbol>@depth` (`1000ms`) into "
        "topic binance.depth, with the REST snapshots that sync it; `off`: no depth stream.",
    )
    depth_resync_seconds: int = Field(
        3600,
        ge=0,
        description="Every book gets a new snapshot this often (spread over the interval; 0: only at start and "
        "after a gap), so that a book stage starting without a checkpoint meets one; 400 books at weight 50 an "
        "hour is 333 weight a minute.",
    )
    depth_snapshot_limit: int = Field(
        1000,
        ge=1,
        le=5000,
        description="Levels a side asked of /api/v3/depth to sync a book (weight 5 up to 100, 25 up to 500, 50 up "
        "to 1,000, 250 up to 5,000): levels deeper than the snapshot are known only once they change.",
    )
    state_interval: float = Field(
        5.0, gt=0, description="Seconds between two saves of where each stream stands (topic binance.ingest_state)."
    )
    ws_stale_after: float = Field(
        30.0, gt=0, description="Seconds without any frame after which the WebSocket is treated as dead."
    )
    ws_max_age: float = Field(
        23 * 3600.0,
        gt=0,
        description="Seconds after which a new connection replaces the current one (Binance cuts at 24 h).",
    )
    ws_max_frame_bytes: int = Field(1 << 20, gt=0, description="Largest WebSocket frame accepted.")
    max_clock_skew_seconds: int = Field(
        60,
        ge=0,
        description="How far an event time may be ahead of its ingestion time, and an ingestion time ahead of the "
        "record's Kafka timestamp (the broker's append time); later records are dead letters. A capture replayed at full speed with "
        "--shift-to-now needs the capture's length.",
    )
    backoff_initial: float = Field(1.0, gt=0, description="First reconnect delay, in seconds.")
    backoff_max: float = Field(60.0, gt=0, description="Longest reconnect delay, in seconds.")
    backfill_grace: float = Field(
        1.0, ge=0, description="Seconds a gap may wait for out-of-order frames before it is backfilled over REST."
    )
    producer_linger_ms: int = Field(20, ge=0, le=1000, description="Kafka producer batching delay (linger.ms).")
    producer_buffer_mb: int = Field(
        128,
        ge=1,
        le=2048,
        description="Most MiB of messages the ingestion's producer holds before Kafka acknowledges them "
        "(queue.buffering.max.kbytes); when full, reading the exchange waits (~40 s of the whole market).",
    )
    # ---- worker
    worker_group: str = Field("binance-buffer", description="Kafka consumer group of the worker.")
    worker_health_port: int = Field(8082, ge=0, le=65535, description="Worker's /health and /metrics port.")
    book_group: str = Field("cryptomon-book", description="Kafka consumer group of the book stage.")
    book_health_port: int = Field(8084, ge=0, le=65535, description="Book stage's /health and /metrics port.")
    book_levels: int = Field(20, ge=1, le=5000, description="Levels a side in each order_book_snapshots row.")
    book_snapshot_seconds: int = Field(
        1,
        ge=1,
        le=3600,
        description="Interval of event time per order_book_snapshots row: a book that changed in it gets one row, "
        "the book after its last diff in the interval.",
    )
    book_metrics_seconds: int = Field(
        30,
        ge=1,
        le=86_400,
        description="Window of event time per book_metrics row (mid, microprice, spread, depth within 10 bps "
        "and 1 %, imbalance, bookTicker checks), grown by each order_book_snapshots row in it.",
    )
    liquidity_band: Literal["10bps", "1pct"] = Field(
        "10bps",
        description="Depth band the liquidity alert watches (book_metrics.liquidity_drop): within 10 bps or 1 % "
        "of the mid, both sides. 10 bps: a 1,000-level snapshot reaches only ~0.33 % of BTCUSDT's price and "
        "~0.9 % of ETHUSDT's, so their 1 % band is never known whole and would never alert.",
    )
    liquidity_drop_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="A window's depth in the band below this fraction of its median over the previous 30 minutes "
        "of windows sets liquidity_drop.",
    )
    book_checkpoint_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds between two checkpoints of the book stage (every book's levels and the offsets read, "
        "in the transaction of the rows): a restart replays at most that much.",
    )
    book_start_lookback_seconds: int = Field(
        4200,
        ge=0,
        description="Where a book stage with no checkpoint starts reading binance.depth: this far back, so that "
        "it meets a snapshot of every book (the ingestion sends one per book every CRYPTOMON_DEPTH_RESYNC_SECONDS).",
    )
    flush_max_rows: int = Field(500, ge=1, le=100_000, description="Flush a partition's buffer at this many messages.")
    flush_max_seconds: float = Field(
        2.0, gt=0, description="Flush a buffer at the latest this long after its first message."
    )
    worker_poll_timeout: float = Field(
        0.05,
        gt=0,
        le=5,
        description="Seconds the worker waits for more messages before treating the topic as drained (and flushing).",
    )
    worker_writers: int = Field(2, ge=1, le=16, description="Database connections writing batches side by side.")
    db_retry_max: float = Field(10.0, gt=0, description="Longest wait between database retries while it is down.")
    # ---- retention and the archive (src/cryptomon/retention/)
    retention_trades: int = Field(
        7 * DAY,
        description="Age (event time) after which trades' chunks are archived and dropped: a number of seconds or "
        "30m, 12h, 7d, 2w; 0: kept for ever.",
    )
    retention_book_ticker: int = Field(3 * DAY, description="The same for book_ticker (by ingestion time): 3 days.")
    retention_order_book: int = Field(
        3 * DAY, description="The same for order_book_snapshots (by snapshot time): 3 days."
    )
    retention_metrics: int = Field(
        0,
        description="The same for trade_metrics, spread_metrics and book_metrics (by window start); 0: for ever.",
    )
    retention_dead_letters: int = Field(
        30 * DAY, description="Dead letters older than this are deleted (a plain table, pruned by age); 0: never."
    )
    retention_stream_progress: int = Field(
        7 * DAY, description="Spark's stream_progress rows older than this are deleted; 0: never."
    )
    retention_interval_seconds: float = Field(
        300.0, gt=0, description="Seconds between two passes of `cryptomon retention` over the tables."
    )
    retention_hold_seconds: float = Field(
        60.0,
        ge=10,
        description="A table's archive horizon is published this long before chunks below it are dropped, so that "
        "every writer has seen it (they re-read it every 5 s) and sets older rows aside as dead letters.",
    )
    retention_health_port: int = Field(8085, ge=0, le=65535, description="Retention's /health and /metrics port.")
    archive: bool = Field(
        True,
        description="Write each chunk to Parquet (zstd) under the archive folder, verified, before it is dropped; "
        "off: chunks are dropped without a copy.",
    )
    archive_dir: Path | None = Field(
        None,
        description="The archive folder (archive/<table>/date=YYYY-MM-DD/*.parquet); default: archive in the "
        "state folder.",
    )

    # ---- Spark job and alert rules (the Grafana alerts read the same values)
    spark_master: str = Field("local[2]", description="Spark master URL of the streaming job.")
    spark_shuffle_partitions: int = Field(2, ge=1, description="spark.sql.shuffle.partitions of the streaming job.")
    spark_driver_memory: str = Field(
        "768m",
        pattern=r"^\d+[mg]$",
        description="JVM heap of the Spark driver (spark.driver.memory; local mode: the whole job).",
    )
    spark_driver_java_options: str = Field(
        "-XX:+UseSerialGC -XX:ReservedCodeCacheSize=128m",
        description="JVM options of the Spark driver (spark.driver.extraJavaOptions; local mode: the whole job): "
        "the serial collector (no concurrent GC threads or G1's remembered sets on a small heap) and a smaller code "
        "cache, what keeps the job's RSS and CPU down beside its heap.",
    )
    spark_status_retained: int = Field(
        100,
        ge=1,
        description="Jobs, stages and SQL executions the Spark driver keeps for its UI and status API "
        "(spark.ui.retainedJobs, spark.ui.retainedStages, spark.sql.ui.retainedExecutions; Spark's default is "
        "1,000 each). They live in the driver's heap whether the UI is on or not; at the whole market the job "
        "adds ~37 stages, ~19 jobs and ~12 SQL executions a minute, so Spark's default lets them pile up for "
        "27 to 83 minutes before it drops any.",
    )
    spark_trigger_seconds: float = Field(10.0, gt=0, description="Micro-batch trigger interval of the streaming job.")
    spark_trigger_offset_seconds: float = Field(
        1.0,
        ge=0,
        description="Micro-batches start this long after each multiple of the trigger interval, so that the "
        "batch closing a window holds its last trades, still on their way when it ends (0: Spark's own "
        "trigger, at the multiples; spark/pacing.py).",
    )
    spark_checkpoint_dir: Path | None = Field(
        None,
        description="Checkpoints of the streaming queries (restart point); default: spark-checkpoints in the "
        "state folder, with the rest of the state and under the disk guard.",
    )
    spark_max_offsets_per_trigger: int = Field(
        500_000, ge=1, description="Most Kafka messages one micro-batch reads (bounds catch-up batches)."
    )
    spark_starting_offsets: str = Field(
        "earliest",
        pattern=r"^(earliest|latest|\{.*\})$",
        description="Where a job without a checkpoint starts reading Kafka: earliest (everything retained), "
        'latest (what arrives from now on), or Spark\'s JSON of offsets per topic and partition, {"topic": {"0": 42}}.',
    )
    spark_warmup_records: int = Field(
        200_000,
        ge=0,
        description="Made-up records the job sums before its query starts, so that its first micro-batch finds "
        "its code compiled (0: none; spark/warmup.py).",
    )
    spark_ui_port: int = Field(4040, ge=0, le=65535, description="Spark UI port (0 disables the UI).")
    spark_driver_host: str = Field(
        "127.0.0.1",
        description="Address the Spark driver (its RPC, block manager and UI) listens on and gives executors; "
        "loopback keeps them off the network, a cluster of several machines needs one its executors reach.",
    )
    spark_driver_bind_address: str = Field(
        "",
        description="Address the driver's sockets bind to when it differs from the one executors are given "
        "(a container behind port forwarding: 0.0.0.0); empty: CRYPTOMON_SPARK_DRIVER_HOST.",
    )
    volatility_threshold: float = Field(
        2.0, gt=0, description="volatility_alert fires when a 1-minute window's price stddev exceeds this."
    )
    volatility_thresholds: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="Per-symbol overrides of the volatility threshold, e.g. `BTCUSDT=50,ETHUSDT=5`.",
    )
    volume_spike_factor: float = Field(
        3.0,
        gt=0,
        description="volume_spike fires when a window's volume exceeds this many times the mean of the previous windows.",
    )
    volume_spike_windows: int = Field(10, ge=1, description="How many previous windows the volume mean covers.")
    volume_spike_min_windows: int = Field(
        3,
        ge=1,
        description="volume_spike needs at least this many previous windows, so that the partial first window "
        "after a start does not flag the next one.",
    )
    spread_warning_factor: float = Field(
        3.0,
        gt=0,
        description="spread_warning fires when a 30-second window's max spread exceeds this many times its min.",
    )

    # ---- web view and alert e-mails without Grafana
    dashboard_port: int = Field(
        8050,
        ge=0,
        le=65535,
        description="Port of `cryptomon dashboard`, the web view of both dashboards (0: off in `up`).",
    )
    alert_email: str = Field(
        "", description="Where alert e-mails go (comma-separated). Empty: `up` does not start the notifier."
    )
    alert_from: str = Field("cryptomon@localhost", description="Sender address of the alert e-mails.")
    alert_interval_seconds: float = Field(30.0, gt=0, description="How often the notifier evaluates the alert rules.")
    notify_health_port: int = Field(8083, ge=0, le=65535, description="Notifier's /health and /metrics port.")
    alert_send_resolved: bool = Field(True, description="Also mail when a firing alert stops firing.")
    smtp_host: str = Field("127.0.0.1", description="SMTP server of the notifier.")
    smtp_port: int = Field(1025, ge=1, le=65535, description="SMTP port (1025: a local catcher such as Mailpit).")
    smtp_user: str = Field("", description="SMTP user; empty: no login.")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP password (never logged).")
    smtp_tls: Literal["auto", "starttls", "implicit", "off"] = Field(
        "auto",
        description="TLS to the SMTP server: `implicit` (TLS from the start, port 465), `starttls` (upgrade before "
        "logging in, port 587), `off`; `auto` picks by the port: 465 implicit, 1025 (a local catcher) off, any other "
        "port STARTTLS.",
    )

    @property
    def smtp_tls_mode(self) -> str:
        """The TLS mode in force: `smtp_tls`, with `auto` resolved by the port."""
        if self.smtp_tls != "auto":
            return self.smtp_tls
        return {465: "implicit", 1025: "off"}.get(self.smtp_port, "starttls")

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            value = tuple(str(s).strip().upper() for s in value if str(s).strip())
        return value

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one symbol is required")
        bad = [s for s in value if not _SYMBOL.match(s)]
        if bad:
            raise ValueError(f"not a Binance symbol or pattern: {', '.join(bad)}")
        if len(set(value)) != len(value):
            raise ValueError("symbols are listed twice")
        return value

    @field_validator(*AGE_FIELDS, mode="before")
    @classmethod
    def _parse_age(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_age(value)
        if isinstance(value, int) and value < 0:
            raise ValueError("an age is 0 (for ever) or more seconds")
        return value

    @field_validator("ingest_instance")
    @classmethod
    def _check_instance(cls, value: str) -> str:
        parse_instance(value)
        return value.replace(" ", "")

    @property
    def instance(self) -> tuple[int, int]:
        """(i, N) of CRYPTOMON_INGEST_INSTANCE."""
        return parse_instance(self.ingest_instance)

    @field_validator("volatility_thresholds", mode="before")
    @classmethod
    def _parse_thresholds(cls, value: object) -> object:
        if isinstance(value, str):
            out = {}
            for item in filter(None, (v.strip() for v in value.split(","))):
                sym, sep, num = item.partition("=")
                if not sep:
                    raise ValueError(f"expected SYMBOL=number, got {item!r}")
                try:
                    out[sym.strip().upper()] = float(num)
                except ValueError:
                    raise ValueError(f"{num!r} is not a number (in {item!r})") from None
            return out
        return value

    @property
    def max_clock_skew_ms(self) -> int:
        return self.max_clock_skew_seconds * 1000

    def volatility_threshold_for(self, symbol: str) -> float:
        return self.volatility_thresholds.get(symbol, self.volatility_threshold)

    @field_validator("binance_ws_url")
    @classmethod
    def _check_ws_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("binance_rest_url")
    @classmethod
    def _check_rest_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    @field_validator("pg_dsn")
    @classmethod
    def _check_dsn(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError("expected postgresql://user:password@host:port/dbname")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR")
        return value

    @model_validator(mode="after")
    def _check_retention(self) -> Settings:
        """Ages that would let a writer re-create what retention dropped are refused, naming the setting."""
        kafka = self.kafka_retention or KAFKA_MARKET_RETENTION_SECONDS
        if 0 < self.retention_metrics < kafka + DAY:
            raise ValueError(
                f"CRYPTOMON_RETENTION_METRICS must be 0 or at least a day more than Kafka keeps the market ({kafka} s):"
                " Spark can recompute windows that far back and would write them into chunks already archived"
            )
        if 0 < self.retention_order_book <= self.book_start_lookback_seconds + self.retention_hold_seconds:
            raise ValueError(
                "CRYPTOMON_RETENTION_ORDER_BOOK must be 0 or longer than CRYPTOMON_BOOK_START_LOOKBACK_SECONDS plus "
                "CRYPTOMON_RETENTION_HOLD_SECONDS: a book stage starting afresh rewrites rows that far back"
            )
        return self

    @property
    def spark_checkpoints(self) -> Path:
        return (self.spark_checkpoint_dir or self.state_dir / "spark-checkpoints").expanduser()

    @property
    def archive_path(self) -> Path:
        return (self.archive_dir or self.state_dir / "archive").expanduser()

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        host, _, port = self.kafka_bootstrap.split(",")[0].strip().rpartition(":")
        return host, int(port)


def parse_age(text: str) -> int:
    """'90', '30m', '12h', '7d', '2w' -> seconds. Raises ValueError."""
    m = _AGE.match(text.strip().lower())
    if not m:
        raise ValueError(f"expected seconds or a number with s, m, h, d or w (30m, 7d), got {text!r}")
    return int(m.group(1)) * _AGE_UNITS[m.group(2) or "s"]


def parse_instance(spec: str) -> tuple[int, int]:
    """'i/N' -> (i, N), 0 <= i < N. Raises ValueError."""
    i, sep, n = spec.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"expected i/N (e.g. 0/2), got {spec!r}")
    index, count = int(i), int(n)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"instance {index} of {count}: expected 0 <= i < N")
    return index, count


class SettingsError(ConfigError):
    """Raised with one line per bad setting, each naming its environment variable."""


SECRET_FIELDS = {"smtp_password", "kafka_sasl_password", "binance_api_key", "pg_dsn"}


def describe_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        if not e["loc"]:  # a check across settings: its message names them
            lines.append(e["msg"].removeprefix("Value error, "))
            continue
        field = str(e["loc"][0])
        shown = "***" if field in SECRET_FIELDS or "dsn" in field else repr(e.get("input"))[:200]  # no password printed
        lines.append(f"{ENV_PREFIX}{field.upper()}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(describe_validation_error(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
