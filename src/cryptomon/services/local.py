"""The local stack without Docker: a single-node Kafka (KRaft) and a TimescaleDB cluster.

Both keep their data under the state folder (`CRYPTOMON_STATE_DIR`, default ./.cryptomon):

    <state>/kafka/{server.properties,log4j2.yaml,data/}   <state>/pg/{data/,run/}   <state>/logs/*.log

`up` is idempotent (already running: nothing to do), `down` stops cleanly, data survives both.
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptomon.errors import ConfigError, Unavailable
from cryptomon.settings import Settings, load_settings

log = logging.getLogger(__name__)


class ServiceError(Unavailable):
    """A local service could not be started or reached; the message says what to do."""


class ServiceSetupError(ServiceError, ConfigError):
    """A local service cannot start because something is not installed or configured (run scripts/setup.sh)."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_checked(cmd: list[str], what: str) -> None:
    """Run a setup command; on failure raise ServiceError carrying its own error output."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise ServiceError(f"{what} failed (exit {proc.returncode}): " + " | ".join(detail))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists": treat as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class Status:
    """What `services status` shows of one local service."""

    name: str
    running: bool
    address: str
    pid: int | None
    data_dir: Path
    log_file: Path


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka makes them: a random UUID in URL-safe base64, never starting with '-'
    (the storage tool would read such an id as an option: 1 format in 64 failed that way)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class LocalProcess:
    """A local service run as one process with a pid file: its address, pid, whether it runs, its status.
    Subclasses set name, host, port, pid_file, data_dir and log_file."""

    name: str
    host: str
    port: int
    pid_file: Path
    data_dir: Path
    log_file: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def status(self) -> Status:
        pid = self.pid()
        return Status(
            self.name,
            pid is not None and port_open(self.host, self.port),
            self.address,
            pid,
            self.data_dir,
            self.log_file,
        )


class KafkaBroker(LocalProcess):
    """One node of Apache Kafka 4 in KRaft combined mode (broker + controller), from Maven jars: node 1 of 1
    by default, or node `node` of a cluster of `CRYPTOMON_KAFKA_NODES`, each with its ports and log dir."""

    def __init__(self, settings: Settings, node: int = 1):
        self.settings = settings
        self.node, self.nodes = node, settings.kafka_nodes
        self.name = "kafka" if self.nodes == 1 else f"kafka-{node}"
        host, base = settings.kafka_host_port
        self.host, self.port = host, base + 2 * (node - 1)
        self.controller_port = settings.kafka_controller_port + 2 * (node - 1)
        self.dir = settings.state_dir.resolve() / ("kafka" if node == 1 else f"kafka-{node}")
        self.data_dir = self.dir / "data"
        self.config = self.dir / "server.properties"
        self.log_config = self.dir / "log4j2.yaml"
        self.pid_file = self.dir / "kafka.pid"
        self.log_file = settings.state_dir.resolve() / "logs" / f"{self.name}.log"
        self.jars = settings.deps_dir / "kafka"
        self.cluster_id_file = settings.state_dir.resolve() / "kafka-cluster-id"

    def _write_config(self) -> None:
        h = self.host
        base = self.controller_port - 2 * (self.node - 1)
        voters = ",".join(f"{n}@{h}:{base + 2 * (n - 1)}" for n in range(1, self.nodes + 1))
        rf, isr = min(3, self.nodes), 2 if self.nodes >= 3 else 1  # the internal topics, as replication_plan()
        self.config.write_text(
            "\n".join(
                [
                    "# generated by `cryptomon services up`; edits are overwritten",
                    "process.roles=broker,controller",
                    f"node.id={self.node}",
                    f"controller.quorum.voters={voters}",
                    f"listeners=PLAINTEXT://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{h}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    "num.partitions=3",
                    "auto.create.topics.enable=false",
                    f"offsets.topic.replication.factor={rf}",
                    f"transaction.state.log.replication.factor={rf}",
                    f"transaction.state.log.min.isr={isr}",
                    # idempotent producers get their id from the transaction coordinator; one partition
                    # (not 50) makes its topic quick to create and load on a fresh single-node broker
                    "transaction.state.log.num.partitions=1",
                    f"share.coordinator.state.topic.replication.factor={rf}",
                    f"share.coordinator.state.topic.min.isr={isr}",
                    "group.initial.rebalance.delay.ms=0",
                    # offset commits are answered without waiting for more writes to batch (default 5 ms):
                    # the worker commits synchronously after every flush
                    "group.coordinator.append.linger.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        self.log_config.write_text(
            "Configuration:\n"
            "  Appenders:\n"
            "    RollingFile:\n"
            "      name: file\n"
            f"      fileName: {self.log_file}\n"
            f"      filePattern: {self.log_file}.%i\n"
            '      PatternLayout: {pattern: "[%d] %p %m (%c)%n"}\n'
            "      Policies: {SizeBasedTriggeringPolicy: {size: 50MB}}\n"
            "      DefaultRolloverStrategy: {max: 3}\n"
            "  Loggers:\n"
            "    Root: {level: INFO, AppenderRef: [{ref: file}]}\n"
            "    Logger: [{name: kafka.request.logger, level: WARN}, {name: state.change.logger, level: WARN}]\n"
        )

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        java = shutil.which("java")
        if not java:
            raise ServiceSetupError("java not found: run scripts/setup.sh (OpenJDK 17)")
        if not any(self.jars.glob("kafka_2.13-*.jar")):
            raise ServiceSetupError(f"no Kafka jars in {self.jars}: run scripts/setup.sh")
        return [
            java,
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.log_config}",
            "-cp",
            f"{self.jars}/*",
            *args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Format the log directory if new and start the process, without waiting: a cluster's nodes open
        their listeners only once a quorum of controllers is up, so all are launched before any is waited for."""
        self._proc: subprocess.Popen | None = None
        if self.running():
            return
        if port_open(self.host, self.port):
            raise ServiceError(f"{self.address} is taken by another process: stop it or set CRYPTOMON_KAFKA_BOOTSTRAP")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            run_checked(
                self._java("kafka.tools.StorageTool", "format", "-t", self._cluster_id(), "-c", str(self.config)),
                "formatting Kafka's log directory",
            )
        with open(self.dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config), heap=self.settings.kafka_heap),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        self._proc = proc

    def wait_ready(self, timeout: float = 90.0) -> None:
        proc = getattr(self, "_proc", None)

        def ready() -> bool:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(f"Kafka exited with code {proc.returncode}: see {self.log_file}")
            return port_open(self.host, self.port) and self._metadata_ok()

        wait_until(ready, timeout, f"Kafka on {self.address}")

    def _cluster_id(self) -> str:
        """The cluster's id, one for all its nodes (kept in the state folder)."""
        if not self.cluster_id_file.exists():
            self.cluster_id_file.write_text(new_cluster_id())
        return self.cluster_id_file.read_text().strip()

    def _metadata_ok(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.address}).list_topics(timeout=2)
            return bool(md.brokers)
        except Exception:
            return False

    def stop(self, timeout: float = 60.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)  # controlled shutdown: flushes logs, clean restart
        try:
            wait_until(lambda: not pid_alive(pid), timeout, "Kafka to stop")
        except ServiceError:
            log.warning("Kafka did not stop in %.0fs: killing it", timeout)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 10, "Kafka to die")
        self.pid_file.unlink(missing_ok=True)


class TimescaleDB:
    """A PostgreSQL 15 cluster with the timescaledb extension preloaded, owned by this project."""

    name = "timescaledb"
    superuser = "postgres"

    def __init__(self, settings: Settings):
        self.settings = settings
        dsn = urlsplit(settings.pg_dsn)
        self.host = dsn.hostname or "127.0.0.1"
        self.port = dsn.port or 5432
        self.user = unquote(dsn.username or "cryptomon")
        self.password = unquote(dsn.password or "")
        self.dbname = (dsn.path or "/cryptomon").lstrip("/") or "cryptomon"
        self.dir = settings.state_dir.resolve() / "pg"
        self.data_dir = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.log_file = settings.state_dir.resolve() / "logs" / "postgres.log"
        self.bin = settings.pg_bin_dir

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # PostgreSQL refuses to run as root: when we are root, its processes run as the `postgres` user.
    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceSetupError("running as root but there is no 'postgres' user: install postgresql-15") from None
        return ["runuser", "-u", "postgres", "--", *cmd]

    def _chown(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in paths:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _pg(self, tool: str) -> str:
        path = self.bin / tool
        if not path.exists():
            raise ServiceSetupError(
                f"{path} not found: run scripts/setup.sh (PostgreSQL 15) or set CRYPTOMON_PG_BIN_DIR"
            )
        return str(path)

    def pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def status(self) -> Status:
        pid = self.pid()
        return Status(
            self.name,
            pid is not None and port_open(self.host, self.port),
            self.address,
            pid,
            self.data_dir,
            self.log_file,
        )

    def _init_cluster(self) -> None:
        for d in (self.dir, self.data_dir, self.socket_dir, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        self._chown(self.dir, self.data_dir, self.socket_dir)
        if not self.log_file.exists():
            self.log_file.touch()
        self._chown(self.log_file)
        os.chmod(self.data_dir, 0o700)
        run_checked(
            self._as_owner(
                [
                    self._pg("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.superuser,
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            ),
            f"initdb in {self.data_dir} (the 'postgres' user must be able to reach that folder)",
        )

    def _server_options(self) -> str:
        opts = {
            "port": self.port,
            "listen_addresses": self.host,
            "unix_socket_directories": self.socket_dir,
            "shared_preload_libraries": "timescaledb",
            "timescaledb.telemetry_level": "off",
            "max_connections": 100,
            "shared_buffers": "256MB",
            "synchronous_commit": "on",
        }
        return " ".join(f"-c {k}={v}" for k, v in opts.items())

    def start(self, timeout: float = 60.0) -> None:
        if self.running():
            return
        if port_open(self.host, self.port):
            raise ServiceError(f"{self.address} is taken by another process: stop it or set CRYPTOMON_PG_DSN")
        if not (self.data_dir / "PG_VERSION").exists():
            self._init_cluster()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        run_checked(
            self._as_owner(
                [
                    self._pg("pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "-o",
                    self._server_options(),
                ]
            ),
            f"starting PostgreSQL (see {self.log_file})",
        )
        wait_until(lambda: port_open(self.host, self.port), timeout, f"PostgreSQL on {self.address}")
        self.bootstrap()

    def bootstrap(self) -> None:
        """Create the application role, the database of the DSN and its extension (superuser work, over the
        socket); run again with another DSN, another database of the same server (the retention tests)."""
        import psycopg
        from psycopg import sql

        def admin(dbname: str) -> psycopg.Connection:
            return psycopg.connect(
                host=str(self.socket_dir), port=self.port, user=self.superuser, dbname=dbname, autocommit=True
            )

        with admin("postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(self.user)))
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(self.user), sql.Literal(self.password))
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.dbname), sql.Identifier(self.user)
                    )
                )
        with admin(self.dbname) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")

    def stop(self, timeout: float = 60.0) -> None:
        if not self.running():
            return
        run_checked(
            self._as_owner(
                [self._pg("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout))]
            ),
            "stopping PostgreSQL",
        )


def services(settings: Settings) -> list[KafkaBroker | TimescaleDB]:
    return [*kafka_nodes(settings), TimescaleDB(settings)]


def kafka_nodes(settings: Settings) -> list[KafkaBroker]:
    return [KafkaBroker(settings, node) for node in range(1, settings.kafka_nodes + 1)]


def cluster_bootstrap(settings: Settings) -> str:
    """Every node's address, for clients that must find the cluster whichever node is down."""
    return ",".join(n.address for n in kafka_nodes(settings))


def stack_up(settings: Settings, report=lambda msg: None) -> None:
    """Start what is not running, wait for it, then create the topics and apply the schema."""
    from cryptomon.db.migrate import migrate
    from cryptomon.diskguard import DiskGuard
    from cryptomon.kafka.topics import ensure_topics

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if low := DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb).check():
        raise ServiceError(f"{low}: make room before starting Kafka and TimescaleDB there")
    nodes = kafka_nodes(settings)
    already = {n.name: n.running() for n in nodes}
    for node in nodes:  # every node launched first: each waits for a quorum of the others
        node.launch()
    for node in nodes:
        node.wait_ready()
        report(f"{node.name} {'already running' if already[node.name] else 'started'} on {node.address}")
    db = TimescaleDB(settings)
    db_running = db.running()
    db.start()
    report(f"{db.name} {'already running' if db_running else 'started'} on {db.address}")
    if settings.kafka_nodes > 1:
        wait_until(lambda: len(_brokers(settings.kafka_bootstrap)) == settings.kafka_nodes, 120,
                   f"all {settings.kafka_nodes} Kafka nodes in the cluster")  # fmt: skip
    result = ensure_topics(
        settings.kafka_bootstrap,
        replication_factor=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
        market_retention_seconds=settings.kafka_retention,
    )
    report("topics: " + ", ".join(f"{t} ({r})" for t, r in result.items()))
    warm_up_producer_ids(settings.kafka_bootstrap)
    warm_up_group_coordinator(settings.kafka_bootstrap, settings.worker_group)
    applied = migrate(settings.pg_dsn)
    report(f"schema: {'applied migrations ' + str(applied) if applied else 'up to date'}")


def _brokers(bootstrap: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    try:
        return list(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2).brokers)
    except Exception:
        return []


def under_replicated(bootstrap: str, timeout: float = 5.0) -> list[str]:
    """`topic[partition]` of every partition with fewer in-sync replicas than replicas (or no leader)."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout)
    return [
        f"{name}[{p.id}]"
        for name, topic in sorted(md.topics.items())
        for p in topic.partitions.values()
        if p.leader < 0 or len(p.isrs) < len(p.replicas)
    ]


def warm_up_producer_ids(bootstrap: str, timeout: float = 60.0) -> None:
    """Have the broker create and load its transaction coordinator now (what hands idempotent producers
    their ids), so that the ingestion's first messages on a fresh broker do not wait for it
    ("Coordinator load in progress" for seconds). Harmless when it is loaded already."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "cryptomon-warm-up"})
    p.init_transactions(timeout)


def warm_up_group_coordinator(bootstrap: str, group: str, timeout: float = 60.0) -> None:
    """Have the broker create and load its group coordinator (the `__consumer_offsets` topic) now, by
    reading the group's committed offsets, so that the worker's first offset commit on a fresh broker
    does not wait for it. Writes nothing; harmless when it is loaded already."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from cryptomon.kafka.clients import consumer_config
    from cryptomon.kafka.topics import topic_name

    c = Consumer(consumer_config(bootstrap, group))
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                c.committed([TopicPartition(topic_name("trades"), 0)], timeout=10)
                return
            except KafkaException:  # NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS while it loads
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()


def stack_down(settings: Settings, report=lambda msg: None) -> None:
    for svc in reversed(services(settings)):
        was = svc.running()
        svc.stop()
        report(f"{svc.name} {'stopped' if was else 'was not running'}")


def throwaway_state_dir(prefix: str) -> Path:
    """A fresh temporary state folder that the `postgres` user can reach (mkdtemp makes it 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def throwaway_settings(state_dir: Path, kafka_port: int, pg_port: int, **overrides) -> Settings:
    """Settings for a local stack of its own: its state folder, ports and a local-only password."""
    return load_settings(
        state_dir=state_dir,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        kafka_controller_port=kafka_port + 1,
        pg_dsn=f"postgresql://cryptomon:throwaway-local-only@127.0.0.1:{pg_port}/cryptomon",
        **overrides,
    )


@contextmanager
def throwaway_stack(kafka_port: int, pg_port: int, prefix: str = "cryptomon-", **overrides):
    """Start Kafka + TimescaleDB of their own (tests, benchmarks); stop and delete them afterwards."""
    state = throwaway_state_dir(prefix)
    settings = throwaway_settings(state, kafka_port, pg_port, **overrides)
    try:
        stack_up(settings)
        yield settings
    finally:
        stack_down(settings)
        shutil.rmtree(state, ignore_errors=True)
