"""A Spark standalone cluster (one master, one worker) from PySpark's own `spark-class`, for tests and for
people who want the job to run on executors: `cryptomon services up --spark-cluster`. Everything binds to
127.0.0.1 here; a cluster of several machines starts the same two classes with their hosts' addresses."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from cryptomon.services.local import LocalProcess, ServiceError, ServiceSetupError, pid_alive, port_open, wait_until
from cryptomon.settings import Settings

MASTER_PORT, MASTER_UI_PORT, WORKER_UI_PORT = 7077, 8090, 8091


def spark_class() -> Path:
    import pyspark

    path = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not path.exists():
        raise ServiceSetupError(f"{path} not found: run scripts/setup.sh (PySpark)")
    return path


class SparkDaemon(LocalProcess):
    """The master or the worker of the standalone cluster, as a process with a pid file and a log."""

    def __init__(self, settings: Settings, role: str, port_offset: int = 0):
        self.settings, self.role = settings, role
        self.name = f"spark-{role}"
        self.host = "127.0.0.1"
        self.master_port = MASTER_PORT + port_offset
        self.port = self.master_port if role == "master" else WORKER_UI_PORT + port_offset
        self.dir = self.data_dir = settings.state_dir.resolve() / self.name
        self.pid_file = self.dir / "pid"
        self.log_file = settings.state_dir.resolve() / "logs" / f"{self.name}.log"
        self.ui_port = (MASTER_UI_PORT if role == "master" else WORKER_UI_PORT) + port_offset

    @property
    def master_url(self) -> str:
        return f"spark://{self.host}:{self.master_port}"

    def start(self, timeout: float = 90.0, cores: int = 1, memory: str = "1500m") -> None:
        if self.running():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.role == "master":
            args = ["org.apache.spark.deploy.master.Master", "--host", self.host, "--port", str(self.master_port),
                    "--webui-port", str(self.ui_port)]  # fmt: skip
        else:
            args = ["org.apache.spark.deploy.worker.Worker", self.master_url, "--host", self.host, "--cores",
                    str(cores), "--memory", memory, "--webui-port", str(self.ui_port), "--work-dir",
                    str(self.dir / "work")]  # fmt: skip
        env = {**os.environ, "SPARK_LOCAL_IP": self.host, "SPARK_NO_DAEMONIZE": "1"}
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen([str(spark_class()), *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
        self.pid_file.write_text(str(proc.pid))

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with code {proc.returncode}: see {self.log_file}")
            return port_open(self.host, self.port)

        wait_until(ready, timeout, f"{self.name} on {self.address}")

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.killpg(pid, signal.SIGTERM)  # spark-class runs the JVM as its child: the whole group
        try:
            wait_until(lambda: not pid_alive(pid), timeout, f"{self.name} to stop")
        except ServiceError:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def spark_cluster(settings: Settings, port_offset: int = 0) -> list[SparkDaemon]:
    """The master, then the worker (start in this order, stop in the other)."""
    return [SparkDaemon(settings, "master", port_offset), SparkDaemon(settings, "worker", port_offset)]
