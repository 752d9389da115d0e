"""The real services and endpoints listen on loopback only, unless configured otherwise."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import Proc, env_for, free_port, get_json, wait_for

pytestmark = pytest.mark.integration


def listening(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses with a socket in LISTEN state on `port`, read from /proc/net/tcp{,6}."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state != "0A" or int(p, 16) != port:
                continue
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, len(addr), 8))
            ip = ipaddress.ip_address(raw)
            found.add(getattr(ip, "ipv4_mapped", None) or ip)
    return found


def loopback_only(port: int) -> bool:
    addrs = listening(port)
    return bool(addrs) and all(a.is_loopback for a in addrs)


def test_kafka_and_timescaledb_listen_on_loopback_only(stack):
    kafka_port = int(stack.kafka_bootstrap.rsplit(":", 1)[1])
    for port in (kafka_port, stack.kafka_controller_port, urlsplit(stack.pg_dsn).port):
        assert loopback_only(port), f"port {port}: {listening(port)}"


def test_the_web_view_and_the_notifier_listen_on_loopback_by_default(stack):
    web_port, notify_port = free_port(), free_port()
    env = env_for(
        stack,
        CRYPTOMON_DASHBOARD_PORT=web_port,
        CRYPTOMON_NOTIFY_HEALTH_PORT=notify_port,
        CRYPTOMON_ALERT_EMAIL="a@example.com",
        CRYPTOMON_ALERT_INTERVAL_SECONDS=3600,
    )
    env.pop("CRYPTOMON_HEALTH_HOST", None)
    web, notify = Proc("safe-web", ["dashboard"], env), Proc("safe-notify", ["notify"], env)
    try:
        wait_for(lambda: get_json(f"http://127.0.0.1:{web_port}/health")[0] == 200, 30, what="the web view")
        wait_for(lambda: get_json(f"http://127.0.0.1:{notify_port}/health")[0] == 200, 30, what="the notifier")
        assert loopback_only(web_port), listening(web_port)
        assert loopback_only(notify_port), listening(notify_port)
    finally:
        web.stop()
        notify.stop()
