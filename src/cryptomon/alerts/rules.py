"""Pure alert logic: which alert instances (rule x symbol) changed state, and the e-mail that says so.

The semantics follow Grafana's for the same rules (`dashboards/definitions.py`): a rule's query returns
one row per symbol with a `value`; an instance fires while its value is > 0, and is resolved when the
value drops to 0 or the symbol is no longer returned. Only changes are mailed: an instance that stays
firing is mailed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from cryptomon.binance import limits
from cryptomon.binance.schema import SYMBOL
from cryptomon.dashboards.definitions import AlertRule

Key = tuple[str, str]  # (rule title, symbol)


@dataclass(frozen=True)
class Transition:
    """An alert instance (rule × symbol) that started or stopped firing, with the value that decided it."""

    rule: AlertRule
    symbol: str
    firing: bool
    value: float

    @property
    def key(self) -> Key:
        return (self.rule.title, self.symbol)


def transitions(rules: tuple[AlertRule, ...], previous: dict[Key, bool], current: dict[Key, float]) -> list[Transition]:
    """`previous`: the last recorded state of each instance (True: firing); `current`: the values the
    rules' queries returned now. Returns the instances to notify, in a stable order."""
    by_title = {r.title: r for r in rules}
    out = []
    for key in sorted(set(previous) | set(current)):
        rule = by_title.get(key[0])
        if rule is None:  # a rule that no longer exists: forget it silently
            continue
        value = current.get(key, 0.0)
        now_firing = value > 0
        if now_firing != previous.get(key, False):
            out.append(Transition(rule, key[1], now_firing, value))
    return out


def render_summary(rule: AlertRule, symbol: str) -> str:
    """The rule's summary with Grafana's `{{ $labels.symbol }}` filled in."""
    return rule.summary.replace("{{ $labels.symbol }}", symbol)


def header_safe(symbol: str) -> str:
    """A symbol as it may stand in a mail header: Binance's format, else a marked, cut, printable form (a row
    written by anyone must not end a header line or break the notifier)."""
    if SYMBOL.fullmatch(symbol):
        return symbol
    printable = "".join(c if c.isascii() and c.isprintable() else "?" for c in symbol[: limits.SYMBOL_MAX_LENGTH])
    return f"{printable}(invalid symbol)"


def email_for(t: Transition, at: datetime, sender: str, recipients: list[str], dashboard_url: str = "") -> EmailMessage:
    state = "FIRING" if t.firing else "RESOLVED"
    msg = EmailMessage()
    msg["Subject"] = f"[{state}] {t.rule.title} {header_safe(t.symbol)}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["X-Cryptomon-Alert"] = f"{t.rule.uid}/{header_safe(t.symbol)}/{state.lower()}"
    lines = [
        f"{t.rule.title} is {state.lower()} for {t.symbol}.",
        "",
        render_summary(t.rule, t.symbol)
        if t.firing
        else f"No flagged window for {t.symbol} in the last {t.rule.lookback_seconds} s.",
        "",
        f"evaluated at: {at.isoformat(timespec='seconds')}",
        f"flagged windows in the last {t.rule.lookback_seconds} s: {t.value:g}",
        f"severity: {t.rule.labels.get('severity', '-')}",
    ]
    if dashboard_url:
        lines.append(f"dashboard: {dashboard_url}")
    msg.set_content("\n".join(lines) + "\n")
    return msg
