"""`cryptomon notify`: the alert rules of the Grafana provisioning, evaluated every N seconds against
TimescaleDB, with an e-mail per state change of an alert instance (rule x symbol) over SMTP.

No duplicates: the state of every instance is kept in the `alert_state` table, and a round runs under
a transaction-level advisory lock, so neither a restart nor a second notifier mails an instance that
stays firing again. A change is recorded after its e-mail was accepted by the SMTP server, in the same
transaction, so a mail that could not be sent is retried at the next round; only a crash between the
server's acceptance and the commit can repeat one mail (at-least-once, like every mailer).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge

from cryptomon.alerts.rules import Key, Transition, email_for, transitions
from cryptomon.dashboards.definitions import ALERT_RULES, AlertRule
from cryptomon.dashboards.macros import expand
from cryptomon.settings import Settings
from cryptomon.stopping import stop_on_signals

log = logging.getLogger(__name__)
_LOCK_KEY = 0x616C65727473  # "alerts": one round at a time, whatever the number of notifiers


class Notifier:
    """`cryptomon notify`: the alert rules evaluated every interval, each change of an instance mailed once."""

    def __init__(self, settings: Settings, rules: tuple[AlertRule, ...] = ALERT_RULES):
        self.settings = settings
        self.rules = rules
        self.recipients = [a.strip() for a in settings.alert_email.split(",") if a.strip()]
        self.registry = CollectorRegistry()
        self.sent = Counter(
            "cryptomon_alert_emails_sent",
            "Alert e-mails accepted by the SMTP server",
            ["rule", "state"],
            registry=self.registry,
        )
        self.failures = Counter(
            "cryptomon_alert_email_failures", "Alert e-mails the SMTP server did not accept", registry=self.registry
        )
        self.eval_errors = Counter(
            "cryptomon_alert_evaluation_errors", "Rounds that could not query the database", registry=self.registry
        )
        self.firing = Gauge("cryptomon_alerts_firing", "Alert instances firing", registry=self.registry)
        self.last_round: dict = {}

    # ------------------------------------------------------------- evaluation

    def evaluate(self, conn: psycopg.Connection, at: datetime) -> dict[Key, float]:
        """Run every rule's query over its look-back window ending at `at` (macros expanded as Grafana does)."""
        values: dict[Key, float] = {}
        for rule in self.rules:
            sql = expand(rule.sql, at - timedelta(seconds=rule.lookback_seconds), at)
            for symbol, value in conn.execute(sql).fetchall():
                values[(rule.title, symbol)] = float(value or 0.0)
        return values

    def run_once(self, at: datetime | None = None) -> list[Transition]:
        """One round: evaluate, mail the changes, record them. Returns the changes that were mailed."""
        at = at or datetime.now(UTC)
        done: list[Transition] = []
        with (
            psycopg.connect(self.settings.pg_dsn, connect_timeout=5, application_name="cryptomon-notify") as conn,
            conn.transaction(),
        ):
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            previous = {(r, s): f for r, s, f in conn.execute("SELECT rule, symbol, firing FROM alert_state")}
            current = self.evaluate(conn, at)
            for t in transitions(self.rules, previous, current):
                if (t.firing or self.settings.alert_send_resolved) and not self._mail(t, at):
                    continue  # not recorded: retried next round
                conn.execute(
                    "INSERT INTO alert_state (rule, symbol, firing, value, changed_at, notified_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (rule, symbol) DO UPDATE SET"
                    " firing = EXCLUDED.firing, value = EXCLUDED.value, changed_at = EXCLUDED.changed_at,"
                    " notified_at = EXCLUDED.notified_at",
                    (t.rule.title, t.symbol, t.firing, t.value, at, at),
                )
                done.append(t)
            (firing,) = conn.execute("SELECT count(*) FROM alert_state WHERE firing").fetchone() or (0,)
        self.firing.set(firing)
        self.last_round = {"at": at.isoformat(), "instances": len(current), "changes": len(done), "firing": firing}
        return done

    # ------------------------------------------------------------- e-mail

    def _connect(self) -> smtplib.SMTP:
        """A connection to the SMTP server with the TLS the settings ask for (certificates verified)."""
        s, mode = self.settings, self.settings.smtp_tls_mode
        if mode == "implicit":
            return smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=10, context=ssl.create_default_context())
        smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=10)
        if mode == "starttls":
            try:
                smtp.starttls(context=ssl.create_default_context())
            except BaseException:
                smtp.close()
                raise
        return smtp

    def _mail(self, t: Transition, at: datetime) -> bool:
        msg = email_for(
            t,
            at,
            self.settings.alert_from,
            self.recipients,
            f"http://127.0.0.1:{self.settings.dashboard_port}/" if self.settings.dashboard_port else "",
        )
        try:
            with self._connect() as smtp:
                if self.settings.smtp_user:
                    smtp.login(self.settings.smtp_user, self.settings.smtp_password.get_secret_value())
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            self.failures.inc()
            log.error(
                "could not send %r to %s via %s:%d: %s (retried next round)",
                msg["Subject"],
                msg["To"],
                self.settings.smtp_host,
                self.settings.smtp_port,
                exc,
            )
            return False
        self.sent.labels(t.rule.title, "firing" if t.firing else "resolved").inc()
        log.info("sent %r to %s", msg["Subject"], msg["To"])
        return True

    # ------------------------------------------------------------- loop

    def run(self, stop: threading.Event) -> None:
        log.info(
            "evaluating %d alert rules every %gs, mailing %s via %s:%d",
            len(self.rules),
            self.settings.alert_interval_seconds,
            ", ".join(self.recipients),
            self.settings.smtp_host,
            self.settings.smtp_port,
        )
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except psycopg.Error as exc:
                self.eval_errors.inc()
                log.error("alert round failed, database unreachable or query error: %s (retrying)", exc)
            stop.wait(max(0.0, self.settings.alert_interval_seconds - (time.monotonic() - started)))

    def health(self) -> tuple[bool, dict]:
        return True, {"last_round": self.last_round, "recipients": len(self.recipients)}  # a count: no addresses


def main(settings: Settings) -> None:
    from cryptomon.observability import health_server

    notifier = Notifier(settings)
    stop = threading.Event()
    stop_on_signals(stop)
    server = health_server(settings, settings.notify_health_port, notifier.health, notifier.registry)
    if server:
        server.start()
    try:
        notifier.run(stop)
    finally:
        if server:
            server.stop()
