"""Which alert instances change state, and what their e-mail says."""

from datetime import UTC, datetime

from cryptomon.alerts.rules import email_for, render_summary, transitions
from cryptomon.dashboards.definitions import ALERT_RULES

VOL, SPREAD, LIQUIDITY = ALERT_RULES
AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_a_new_firing_instance_is_one_change():
    changes = transitions(ALERT_RULES, {}, {("VolatilityAlert", "BTCUSDT"): 2.0, ("VolatilityAlert", "ETHUSDT"): 0.0})
    assert [(t.rule.title, t.symbol, t.firing, t.value) for t in changes] == [("VolatilityAlert", "BTCUSDT", True, 2.0)]


def test_an_instance_that_stays_firing_is_no_change():
    assert transitions(ALERT_RULES, {("VolatilityAlert", "BTCUSDT"): True}, {("VolatilityAlert", "BTCUSDT"): 5.0}) == []


def test_an_instance_resolves_when_its_value_drops_or_it_disappears():
    previous = {("VolatilityAlert", "BTCUSDT"): True, ("SpreadWarning", "ETHUSDT"): True}
    changes = transitions(ALERT_RULES, previous, {("VolatilityAlert", "BTCUSDT"): 0.0})
    assert [(t.rule.title, t.symbol, t.firing) for t in changes] == [
        ("SpreadWarning", "ETHUSDT", False),
        ("VolatilityAlert", "BTCUSDT", False),
    ]


def test_a_resolved_instance_that_stays_resolved_is_no_change_and_unknown_rules_are_ignored():
    previous = {("VolatilityAlert", "BTCUSDT"): False, ("GoneRule", "BTCUSDT"): True}
    assert transitions(ALERT_RULES, previous, {("GoneRule", "BTCUSDT"): 1.0}) == []


def test_the_email_names_rule_symbol_and_state():
    [t] = transitions(ALERT_RULES, {}, {("SpreadWarning", "BNBUSDT"): 3.0})
    msg = email_for(t, AT, "cryptomon@localhost", ["a@example.com", "b@example.com"], "http://127.0.0.1:8050/")
    assert msg["Subject"] == "[FIRING] SpreadWarning BNBUSDT"
    assert msg["To"] == "a@example.com, b@example.com"
    assert msg["X-Cryptomon-Alert"] == "cryptomon-spread-warning/BNBUSDT/firing"
    body = msg.get_content()
    assert render_summary(SPREAD, "BNBUSDT") in body and "BNBUSDT exceeded" in body
    assert "flagged windows in the last 120 s: 3" in body and "http://127.0.0.1:8050/" in body

    [t] = transitions(ALERT_RULES, {}, {("LiquidityDrop", "ETHUSDT"): 1.0})
    body = email_for(t, AT, "cryptomon@localhost", ["a@example.com"], "http://127.0.0.1:8050/").get_content()
    assert render_summary(LIQUIDITY, "ETHUSDT") in body and "Book depth of ETHUSDT fell" in body


def test_the_resolved_email():
    [t] = transitions(ALERT_RULES, {("VolatilityAlert", "BTCUSDT"): True}, {})
    msg = email_for(t, AT, "x@localhost", ["a@example.com"])
    assert msg["Subject"] == "[RESOLVED] VolatilityAlert BTCUSDT"
    assert "No flagged window for BTCUSDT in the last 180 s." in msg.get_content()
