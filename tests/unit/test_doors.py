"""Locks on the doors that need no service: Kafka's security settings as each client takes them, the Host
allowlist of the HTTP endpoints, SMTP's TLS by port, and no secret in a settings error."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cryptomon.kafka.security import librdkafka_security, spark_kafka_options
from cryptomon.observability import allowed_hosts, host_guard
from cryptomon.settings import SettingsError, load_settings


def test_plaintext_kafka_adds_nothing_and_sasl_ssl_reaches_every_client():
    assert librdkafka_security(load_settings()) == {} and spark_kafka_options(load_settings()) == {}
    s = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="ingest",
        kafka_sasl_password='pa"ss\\word',
        kafka_ssl_ca_file="/etc/ca.pem",
    )
    assert librdkafka_security(s) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ingest",
        "sasl.password": 'pa"ss\\word',
        "ssl.ca.location": "/etc/ca.pem",
    }
    spark = spark_kafka_options(s)
    assert spark["kafka.security.protocol"] == "SASL_SSL" and spark["kafka.ssl.truststore.type"] == "PEM"
    assert spark["kafka.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="ingest" password="pa\\"ss\\\\word";'
    )
    assert "sasl.username" not in librdkafka_security(load_settings(kafka_security_protocol="SSL"))


def test_the_host_allowlist():
    assert allowed_hosts("127.0.0.1") == frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
    assert "10.0.0.5" in allowed_hosts("10.0.0.5") and "0.0.0.0" not in allowed_hosts("0.0.0.0")
    assert "metrics.internal" in allowed_hosts("0.0.0.0", "metrics.internal, other")
    assert allowed_hosts("0.0.0.0", "*") is None


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:8081", 200), ("localhost", 200), ("[::1]:8081", 200), ("evil.example:8081", 421), ("", 421)],
)
def test_a_request_for_another_host_is_refused(host, status):
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def check() -> int:
        app = web.Application(middlewares=[host_guard(allowed_hosts("127.0.0.1"))])
        app.router.add_get("/health", ok)
        async with TestClient(TestServer(app)) as client:
            return (await client.get("/health", headers={"Host": host})).status

    assert asyncio.run(check()) == status


@pytest.mark.parametrize(("port", "setting", "mode"), [(465, "auto", "implicit"), (587, "auto", "starttls"),
                                                       (25, "auto", "starttls"), (1025, "auto", "off"),
                                                       (587, "off", "off"), (1025, "starttls", "starttls")])  # fmt: skip
def test_smtp_tls_follows_the_port_unless_set(port, setting, mode):
    assert load_settings(smtp_port=port, smtp_tls=setting).smtp_tls_mode == mode


def test_a_settings_error_does_not_print_the_password():
    with pytest.raises(SettingsError) as err:
        load_settings(pg_dsn="mysql://user:hunter2@db:3306/x")
    assert "CRYPTOMON_PG_DSN" in str(err.value) and "hunter2" not in str(err.value)
