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
