"""Docker is not available on the development machines: check the compose file's structure."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_and_ports_follow_the_spec():
    assert {"kafka", "kafka-init", "kafka-ui", "timescaledb", "grafana", "mailpit"} <= set(SERVICES)
    assert "zookeeper" not in SERVICES  # KRaft: Kafka 4 has no ZooKeeper
    ports = {name: svc.get("ports", []) for name, svc in SERVICES.items()}
    assert "127.0.0.1:9092:9092" in ports["kafka"]
    assert "127.0.0.1:8080:8080" in ports["kafka-ui"]
    assert "127.0.0.1:5433:5432" in ports["timescaledb"]
    assert "127.0.0.1:3000:3000" in ports["grafana"]
    for name, published in ports.items():
        for p in published:
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"


def test_kafka_is_kraft_and_init_waits_for_health():
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in SERVICES["kafka"] and "healthcheck" in SERVICES["timescaledb"]
    assert SERVICES["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["kafka-init"]["restart"] == "no"


def test_mounted_files_exist_and_share_the_local_stack_definitions():
    mounts = {}
    for svc in SERVICES.values():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
                mounts[source] = target
    assert "./src/cryptomon/kafka/topics.conf" in mounts
    assert "./src/cryptomon/db/migrations" in mounts
    assert "./grafana/provisioning" in mounts


def test_no_secret_in_the_compose_file():
    tsdb = SERVICES["timescaledb"]["environment"]
    assert tsdb["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert SERVICES["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()


APP = ("migrate", "ingest", "worker", "spark", "retention", "dashboard")


def test_the_app_profile_runs_every_process_from_the_one_dockerfile():
    from typer.main import get_command

    from cryptomon.cli import app

    commands = set(get_command(app).commands)
    for name in APP:
        svc = SERVICES[name]
        assert svc["profiles"] == ["app"] and svc["build"] == "." and svc["image"] == "cryptomon:latest"
        assert svc["command"][0] in commands, f"{name} runs an unknown command {svc['command']}"
        assert svc["environment"]["CRYPTOMON_KAFKA_BOOTSTRAP"] == "kafka:29092"
        assert "@timescaledb:5432/" in svc["environment"]["CRYPTOMON_PG_DSN"]
        assert ":?set" in svc["environment"]["CRYPTOMON_PG_DSN"]  # no default password (owner or app role)
    for name in APP[1:]:  # the processes wait for the topics and the schema
        deps = SERVICES[name]["depends_on"]
        assert deps["kafka-init"]["condition"] == deps["migrate"]["condition"] == "service_completed_successfully"
        assert SERVICES[name]["restart"] == "unless-stopped"
    assert "notify" not in SERVICES  # Grafana mails the alerts in docker compose
    assert "spark-checkpoints" in COMPOSE["volumes"]  # restarts resume from the checkpoint
    for name in ("ingest", "worker", "retention", "dashboard"):
        assert "healthcheck" in SERVICES[name]
    assert (
        "archive:/var/lib/cryptomon/archive" in SERVICES["retention"]["volumes"]
    )  # the archive outlives the container


def test_the_dockerfile_resolves_the_connector_like_setup_does():
    dockerfile = (ROOT / "Dockerfile").read_text()
    setup = (ROOT / "scripts/setup.sh").read_text()
    plugin = next(line.split("=", 1)[1] for line in setup.splitlines() if line.startswith("MVN_DEP_PLUGIN="))
    assert plugin in dockerfile
    assert "COPY setup/maven/spark-kafka/pom.xml" in dockerfile
    assert "CRYPTOMON_DEPS_DIR=/opt/cryptomon/deps" in dockerfile and "/deps/spark-jars" in dockerfile
    assert "USER cryptomon" in dockerfile  # not root
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv/", ".deps/"} <= set(ignored)


def test_compose_runs_with_least_privilege_and_locked_doors():
    app_env = SERVICES["ingest"]["environment"]
    assert app_env["CRYPTOMON_PG_DSN"].startswith("postgresql://cryptomon_app:${CRYPTOMON_DB_APP_PASSWORD:?")
    assert SERVICES["migrate"]["command"] == ["db", "migrate", "--roles"]
    assert SERVICES["migrate"]["environment"]["CRYPTOMON_PG_DSN"].startswith("postgresql://${POSTGRES_USER")
    grafana = SERVICES["grafana"]["environment"]
    assert grafana["CRYPTOMON_PG_USER"] == "cryptomon_reader"
    assert grafana["GF_SMTP_SKIP_VERIFY"] == "${GF_SMTP_SKIP_VERIFY:-false}"
    ui = SERVICES["kafka-ui"]["environment"]
    assert ui["KAFKA_CLUSTERS_0_READONLY"] == "true" and ui["AUTH_TYPE"] == "LOGIN_FORM"
    assert ui["SPRING_SECURITY_USER_PASSWORD"].startswith("${KAFKA_UI_PASSWORD:?")


def test_the_image_installs_locked_hashed_versions_that_satisfy_pyproject():
    import re
    import tomllib

    from packaging.requirements import Requirement

    lock = (ROOT / "requirements.lock").read_text()
    pinned = {m[0].lower(): m[1] for m in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", lock, re.M)}
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", lock)
    assert all("--hash=sha256:" in b for b in blocks if re.match(r"[A-Za-z0-9_.\-]+==", b)), "a pin without hashes"
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower()
        assert name in pinned, f"{name} is not in requirements.lock"
        assert req.specifier.contains(pinned[name]), f"requirements.lock pins {name}=={pinned[name]}, not {req}"
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary
            assert f"{name}-{extra}" in pinned
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile and "--no-deps ." in dockerfile


def test_the_cluster_file_runs_three_kafka_nodes_and_a_spark_cluster():
    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())["services"]
    nodes = [cluster[f"kafka-{i}"] for i in (1, 2, 3)]
    assert {n["environment"]["KAFKA_NODE_ID"] for n in nodes} == {1, 2, 3}
    voters = {n["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for n in nodes}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert all(n["environment"]["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 2 for n in nodes)
    init = cluster["kafka-cluster-init"]["environment"]
    assert (init["REPLICATION_FACTOR"], init["MIN_INSYNC_REPLICAS"]) == (3, 2)
    assert "spark-master" in cluster and "spark-worker" in cluster
    for name, svc in cluster.items():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith("./") or (ROOT / source).exists(), f"{source} is mounted but missing"
