"""`cryptomon notify` against the real TimescaleDB and a real SMTP server (aiosmtpd) started by the test:
one e-mail per alert instance that starts firing, none while it stays firing (also across a restart),
one when it resolves, and a mail the SMTP server refused is sent once it is back."""

from __future__ import annotations

import threading
import uuid
from email import message_from_bytes

import psycopg
import pytest
from aiosmtpd.controller import Controller

from tests.helpers import Proc, env_for, free_port, get_json, wait_for

pytestmark = pytest.mark.integration


class Inbox:
    """aiosmtpd handler: keeps every message the server accepted."""

    def __init__(self):
        self.messages = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"

    def subjects(self, symbols) -> list[str]:
        with self._lock:
            return sorted(m["Subject"] for _, m in self.messages if m["Subject"].split()[-1] in symbols)


def smtp_server(inbox: Inbox, port: int) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    return controller


def flag(dsn: str, symbol: str, volatility: bool = False, spread: bool = False) -> None:
    """A 1-minute trade window and a 30-second spread window that just closed, flagged as asked."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO trade_metrics (symbol, window_start, window_end, vwap, price_stddev, trade_count, volume,"
            " volatility_alert, volume_spike) VALUES (%s, now() - interval '70 s', now() - interval '10 s',"
            " 100, 3.5, 10, 1, %s, false)",
            (symbol, volatility),
        )
        conn.execute(
            "INSERT INTO spread_metrics (symbol, window_start, window_end, avg_spread, max_spread, min_spread,"
            " update_count, spread_warning) VALUES (%s, now() - interval '40 s', now() - interval '10 s',"
            " 0.02, 0.05, 0.01, 30, %s)",
            (symbol, spread),
        )


def rounds(port: int) -> str:
    status, body = get_json(f"http://127.0.0.1:{port}/health")
    return (body or {}).get("last_round", {}).get("at", "") if status == 200 else ""


def wait_rounds(port: int, n: int) -> None:
    """Wait until the notifier has completed n more evaluation rounds."""
    for _ in range(n):
        before = rounds(port)
        wait_for(lambda: rounds(port) not in ("", before), 30, what="a notifier round")


def test_one_email_per_firing_alert_none_while_it_stays_firing_one_when_it_resolves(stack):
    tag = uuid.uuid4().hex[:5].upper()
    risky, calm, late = f"NR{tag}USDT", f"NC{tag}USDT", f"NL{tag}USDT"
    mine = {risky, calm, late}
    inbox, smtp_port, health = Inbox(), free_port(), free_port()
    env = env_for(
        stack,
        CRYPTOMON_ALERT_EMAIL="risk@example.com,ops@example.com",
        CRYPTOMON_SMTP_PORT=smtp_port,
        CRYPTOMON_SMTP_TLS="off",  # the test's aiosmtpd speaks plain SMTP on a random port (auto would want STARTTLS)
        CRYPTOMON_ALERT_INTERVAL_SECONDS=0.5,
        CRYPTOMON_NOTIFY_HEALTH_PORT=health,
    )
    flag(stack.pg_dsn, risky, volatility=True, spread=True)
    flag(stack.pg_dsn, calm)
    smtp = smtp_server(inbox, smtp_port)
    notifier = Proc("notify", ["notify"], env)
    try:
        wait_for(lambda: len(inbox.subjects(mine)) >= 2, 60, what="the firing e-mails")
        wait_rounds(health, 3)  # still firing: nothing more
        assert inbox.subjects(mine) == [f"[FIRING] SpreadWarning {risky}", f"[FIRING] VolatilityAlert {risky}"]
        rcpts, msg = next((r, m) for r, m in inbox.messages if m["Subject"] == f"[FIRING] VolatilityAlert {risky}")
        assert sorted(rcpts) == ["ops@example.com", "risk@example.com"]
        assert "flagged windows in the last 180 s: 1" in msg.get_payload()

        notifier.stop()  # a restart does not mail the same firing alerts again
        notifier = Proc("notify-restarted", ["notify"], env)
        wait_rounds(health, 3)
        assert len(inbox.subjects(mine)) == 2

        with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE trade_metrics SET volatility_alert = false WHERE symbol = %s", (risky,))
        wait_for(lambda: len(inbox.subjects(mine)) == 3, 30, what="the resolved e-mail")
        wait_rounds(health, 2)
        assert inbox.subjects(mine) == [
            f"[FIRING] SpreadWarning {risky}",
            f"[FIRING] VolatilityAlert {risky}",
            f"[RESOLVED] VolatilityAlert {risky}",
        ]

        smtp.stop()  # the SMTP server goes away: the change is retried, not lost, and the notifier lives
        flag(stack.pg_dsn, late, volatility=True)
        wait_for(
            lambda: "could not send '[FIRING] VolatilityAlert " + late in notifier.log(),
            30,
            what="the refused mail to be logged",
        )
        assert notifier.alive()
        smtp = smtp_server(inbox, smtp_port)
        wait_for(lambda: f"[FIRING] VolatilityAlert {late}" in inbox.subjects(mine), 30, what="the retried e-mail")
        wait_rounds(health, 2)
        assert inbox.subjects(mine).count(f"[FIRING] VolatilityAlert {late}") == 1
        assert not any(calm in s for s in inbox.subjects(mine))
        _, metrics = get_json(f"http://127.0.0.1:{health}/health")
        assert metrics["recipients"] == 2  # how many, not who: /health shows no personal data
    finally:
        notifier.stop()
        smtp.stop()
    assert "Traceback" not in notifier.log()
