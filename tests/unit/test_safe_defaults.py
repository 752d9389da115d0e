"""Safe defaults that need no running service: loopback binds, secrets out of the repo, size limits,
parameterised SQL, Grafana without anonymous access. (The listening sockets of the real services are
checked in tests/integration/test_safe_defaults.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from cryptomon.ingestion import rest_client
from cryptomon.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "cryptomon"


def test_every_endpoint_and_local_service_defaults_to_loopback():
    s = load_settings()
    assert s.health_host == "127.0.0.1"  # ingest, worker, notifier health and the web view bind here
    assert s.kafka_bootstrap.startswith("127.0.0.1:") and "@127.0.0.1:" in s.pg_dsn
    assert Settings.model_fields["health_host"].default == "127.0.0.1"


def test_size_limits_on_what_comes_from_the_network():
    assert load_settings().ws_max_frame_bytes == 1 << 20
    assert rest_client.MAX_REST_BYTES == 16 << 20
    source = (SRC / "ingestion" / "connection.py").read_text()
    assert "max_size=self.options.max_frame_bytes" in source  # passed to websockets.connect
    # a larger REST body is refused, not read whole: tests/integration/test_ingestion_exchange.py


def test_no_secret_is_committed():
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key, value in example.items():
        if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key):
            assert value in ("", "change-me"), f".env.example carries a real-looking {key}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD", key) and value:
                assert str(value).startswith("${"), f"{name}: {key} is not taken from .env"
    assert Settings.model_fields["smtp_password"].annotation.__name__ == "SecretStr"


def test_grafana_anonymous_access_is_off():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"


# SQL built from text at run time, each with the reason it is safe. Everything else must be a literal,
# a module constant, or psycopg's sql.SQL(...).format(sql.Identifier(...)) composition.
BUILT_SQL = {
    ("web/data.py", "payload"): "Grafana macros expanded by dashboards/macros.py: times we generate, symbols "
    "the server checked against the configured list",
    ("alerts/notifier.py", "evaluate"): "the alert rules' macros expanded with times we generate",
    ("db/migrate.py", "migrate"): "the migration files of the package, no parameters",
}


def _is_safe_sql(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.Name) and node.id.isupper():
        return True
    if isinstance(node, ast.Attribute) and node.attr.isupper():
        return True
    if isinstance(node, ast.Subscript):
        return _is_safe_sql(node.value)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Call)
        and getattr(node.func.value.func, "attr", "") == "SQL"
    ):
        return all(
            getattr(a.func, "attr", "") in ("Identifier", "Literal") for a in node.args if isinstance(a, ast.Call)
        )
    return False


def test_every_sql_statement_is_a_constant_with_parameters():
    unsafe = []
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for call in ast.walk(func):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "execute"
                    and call.args
                    and not _is_safe_sql(call.args[0])
                    and (rel, func.name) not in BUILT_SQL
                ):
                    unsafe.append(f"{rel}:{call.lineno} in {func.name}()")
    assert sorted(set(unsafe)) == []


def test_the_check_itself_catches_an_f_string():
    call = ast.parse('conn.execute(f"SELECT * FROM t WHERE s = {symbol}")').body[0].value
    assert not _is_safe_sql(call.args[0])
    assert _is_safe_sql(ast.parse('conn.execute("SELECT %s", (1,))').body[0].value.args[0])
