"""Grafana's PostgreSQL macro and variable expansion, reimplemented to run the dashboards' SQL outside
Grafana (tests, other renderers). Semantics follow Grafana's postgres macro engine with the TimescaleDB
option on: $__timeFilter(c) -> c BETWEEN 'from' AND 'to' (RFC 3339, UTC), $__timeFrom(), $__timeTo(),
$__time(c) -> c AS "time", $__timeGroup(c, '1m') -> time_bucket('60.000s',c), $__timeGroupAlias adds
AS "time"; a multi-value variable becomes a quoted, comma-separated list."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from cryptomon.errors import ConfigError

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _interval_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip().strip("'"))
    if not m:
        raise ConfigError(f"cannot parse interval {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano, as Grafana prints it: fractional seconds without trailing zeros."""
    t = t.astimezone(UTC)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(sql: str, time_from: datetime, time_to: datetime, variables: dict[str, list[str]] | None = None) -> str:
    def macro(m: re.Match) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(time_from)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(time_to)}'"
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name in ("__timeGroup", "__timeGroupAlias"):
            group = f"time_bucket('{_interval_seconds(args[1]):.3f}s',{args[0]})"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise ConfigError(f"unknown macro ${name}")

    out = _MACRO.sub(macro, sql)
    for name, values in (variables or {}).items():
        rendered = ",".join(_quote(v) for v in values)
        out = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", rendered, out)
    if re.search(r"\$[a-zA-Z_{]", out):
        raise ConfigError(f"unexpanded variable or macro left in: {out}")
    return out
