"""Kafka's security settings (TLS, SASL) as each client needs them: librdkafka's keys for the producer,
consumers and admin, the Java client's `kafka.*` options for Spark's connector. Empty for PLAINTEXT."""

from __future__ import annotations

from typing import Any

from cryptomon.settings import Settings

_JAAS_MODULE = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def librdkafka_security(settings: Settings) -> dict[str, Any]:
    """security.protocol, sasl.* and ssl.ca.location for confluent-kafka clients."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL"):
        out |= {
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_sasl_username,
            "sasl.password": settings.kafka_sasl_password.get_secret_value(),
        }
    if protocol.endswith("SSL") and settings.kafka_ssl_ca_file:
        out["ssl.ca.location"] = settings.kafka_ssl_ca_file
    return out


def spark_kafka_options(settings: Settings) -> dict[str, str]:
    """The same settings as options of Spark's Kafka source (the Java client's names, `kafka.` prefixed)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, str] = {"kafka.security.protocol": protocol}
    if protocol.startswith("SASL"):
        user = settings.kafka_sasl_username.replace("\\", "\\\\").replace('"', '\\"')
        password = settings.kafka_sasl_password.get_secret_value().replace("\\", "\\\\").replace('"', '\\"')
        out |= {
            "kafka.sasl.mechanism": settings.kafka_sasl_mechanism,
            "kafka.sasl.jaas.config": f'{_JAAS_MODULE[settings.kafka_sasl_mechanism]} required username="{user}" '
            f'password="{password}";',
        }
    if protocol.endswith("SSL") and settings.kafka_ssl_ca_file:
        out |= {"kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.location": settings.kafka_ssl_ca_file}
    return out
