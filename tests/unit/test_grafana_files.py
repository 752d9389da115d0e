"""Grafana cannot run here: check every provisioning file against the format of the pinned version."""

import json
from datetime import UTC
from pathlib import Path

import pytest
import yaml

from cryptomon.dashboards.definitions import ALERT_RULES, DASHBOARDS
from cryptomon.dashboards.grafana import DATASOURCE_TYPE, DATASOURCE_UID, SCHEMA_VERSION, render, stale
from cryptomon.dashboards.macros import expand
from cryptomon.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
PANEL_TYPES = {"timeseries", "bargauge", "stat", "table", "row"}


def test_committed_files_are_not_stale():
    assert stale(GRAFANA) == [], "run `cryptomon grafana generate` and commit grafana/"


def test_compose_pins_a_grafana_11_image_and_mounts_the_files():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    assert compose["image"].startswith("grafana/grafana:11.")
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose["volumes"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/cryptomon.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    # every ${VAR} the provisioning files use is given to the container
    env = compose["environment"]
    for rel in render():
        for var in ("CRYPTOMON_PG_USER", "CRYPTOMON_PG_PASSWORD", "CRYPTOMON_PG_DB", "CRYPTOMON_ALERT_EMAIL"):
            if "${" + var + "}" in (GRAFANA / rel).read_text():
                assert var in env, var


def test_datasource():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/timescaledb.yaml").read_text())
    assert ds["apiVersion"] == 1
    [d] = ds["datasources"]
    assert (d["uid"], d["type"], d["jsonData"]["timescaledb"]) == (DATASOURCE_UID, DATASOURCE_TYPE, True)
    assert d["secureJsonData"]["password"] == "${CRYPTOMON_PG_PASSWORD}"  # no secret in the repo


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_dashboard_json_follows_the_schema(dashboard):
    d = json.loads((GRAFANA / "dashboards" / dashboard.file).read_text())
    assert d["uid"] == dashboard.uid and d["title"] == dashboard.title
    assert d["schemaVersion"] == SCHEMA_VERSION and d["refresh"] == "10s"
    [var] = d["templating"]["list"]
    assert var["name"] == "symbol" and var["multi"] and var["includeAll"]
    assert var["datasource"]["uid"] == DATASOURCE_UID
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] == "row":
            assert p["repeat"] == "symbol"
            continue
        assert p["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
        [t] = p["targets"]
        assert t["format"] in ("time_series", "table") and t["rawQuery"] and t["rawSql"]
        assert t["datasource"]["uid"] == DATASOURCE_UID
    if dashboard.repeat_by_symbol:
        assert d["panels"][0]["type"] == "row"


def test_alerting_file_has_the_documented_fields():
    a = yaml.safe_load((GRAFANA / "provisioning/alerting/cryptomon.yaml").read_text())
    assert a["apiVersion"] == 1
    [group] = a["groups"]
    assert group["interval"] == "30s" and group["folder"]
    assert [r["title"] for r in group["rules"]] == ["VolatilityAlert", "SpreadWarning", "LiquidityDrop"]
    for rule in group["rules"]:
        assert {"uid", "title", "condition", "data", "noDataState", "execErrState", "for"} <= set(rule)
        assert rule["noDataState"] in ("NoData", "Alerting", "OK", "KeepLast")
        assert rule["execErrState"] in ("Error", "Alerting", "OK", "KeepLast")
        refs = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in refs
        assert refs["A"]["datasourceUid"] == DATASOURCE_UID and refs["A"]["relativeTimeRange"]["from"] > 0
        assert refs["B"]["model"]["type"] == "reduce" and refs["B"]["model"]["expression"] == "A"
        assert refs["C"]["model"]["type"] == "threshold" and refs["C"]["model"]["expression"] == "B"
        assert "{{ $labels.symbol }}" in rule["annotations"]["summary"]
    [cp] = a["contactPoints"]
    assert cp["receivers"][0]["type"] == "email"
    assert cp["receivers"][0]["settings"]["addresses"] == "${CRYPTOMON_ALERT_EMAIL}"
    [policy] = a["policies"]
    assert policy["receiver"] == cp["name"]


def test_macro_expansion_matches_grafana():
    from datetime import datetime

    t0 = datetime(2026, 11, 24, 5, 1, 17, tzinfo=UTC)
    t1 = datetime(2026, 11, 24, 5, 6, 17, 500000, tzinfo=UTC)
    sql = "SELECT $__timeGroupAlias(ts, '1m'), x FROM t WHERE $__timeFilter(ts) AND s IN ($symbol) AND $__timeFrom() < $__timeTo()"
    out = expand(sql, t0, t1, {"symbol": ["BTCUSDT", "O'NE"]})
    assert out == (
        "SELECT time_bucket('60.000s',ts) AS \"time\", x FROM t WHERE ts BETWEEN '2026-11-24T05:01:17Z' AND "
        "'2026-11-24T05:06:17.5Z' AND s IN ('BTCUSDT','O''NE') AND '2026-11-24T05:01:17Z' < "
        "'2026-11-24T05:06:17.5Z'"
    )
    with pytest.raises(ConfigError, match="unexpanded"):
        expand("SELECT $other", t0, t1, {})
    assert all(r.sql.count("$__timeFilter") == 1 for r in ALERT_RULES)
