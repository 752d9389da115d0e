import re
from pathlib import Path

import pytest

from cryptomon.settings import ENV_PREFIX, Settings, SettingsError, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_match_the_spec(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"{ENV_PREFIX}{name.upper()}", raising=False)
    s = load_settings(_env_file=None)
    assert s.symbols == ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    assert s.binance_ws_url == "wss://stream.binance.com:9443/stream"
    assert s.binance_rest_url == "https://api.binance.com"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.kafka_host_port == ("127.0.0.1", 9092)
    assert s.pg_dsn.endswith("@127.0.0.1:5433/cryptomon")
    assert s.depth == "100ms"  # the order book is on unless turned off


def test_symbols_from_comma_separated_env(monkeypatch):
    monkeypatch.setenv("CRYPTOMON_SYMBOLS", " btcusdt, SOLUSDT ,")
    assert load_settings().symbols == ("BTCUSDT", "SOLUSDT")


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("CRYPTOMON_SYMBOLS", "BTC-USDT", "not a Binance symbol or pattern: BTC-USDT"),
        ("CRYPTOMON_SYMBOLS", "BTCUSDT,btcusdt", "listed twice"),
        ("CRYPTOMON_BINANCE_WS_URL", "http://example.com", "ws:// or wss://"),
        ("CRYPTOMON_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("CRYPTOMON_PG_DSN", "mysql://x@y/z", "postgresql://"),
        ("CRYPTOMON_KAFKA_CONTROLLER_PORT", "99999", "less than or equal to 65535"),
        ("CRYPTOMON_LOG_LEVEL", "LOUD", "one of DEBUG"),
    ],
)
def test_bad_value_names_the_setting(monkeypatch, env, value, fragment):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(env + ":"), message
    assert fragment in message


def test_cli_exits_2_with_the_setting_named(monkeypatch):
    import subprocess
    import sys

    env = {"CRYPTOMON_SYMBOLS": "BTC/USDT", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "cryptomon", "settings"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "CRYPTOMON_SYMBOLS" in proc.stderr and "BTC/USDT" in proc.stderr


def test_every_setting_is_documented_in_the_readme():
    documented = set(re.findall(r"`(CRYPTOMON_[A-Z_]+)`", README.read_text()))
    declared = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert declared - documented == set(), "settings missing from the README's configuration table"


def test_volatility_thresholds_per_symbol(monkeypatch):
    monkeypatch.setenv("CRYPTOMON_VOLATILITY_THRESHOLDS", "btcusdt=50, ETHUSDT=5.5")
    s = load_settings()
    assert s.volatility_thresholds == {"BTCUSDT": 50.0, "ETHUSDT": 5.5}
    assert s.volatility_threshold_for("BTCUSDT") == 50.0
    assert s.volatility_threshold_for("BNBUSDT") == s.volatility_threshold == 2.0
    monkeypatch.setenv("CRYPTOMON_VOLATILITY_THRESHOLDS", "BTCUSDT:50")
    with pytest.raises(SettingsError, match=r"CRYPTOMON_VOLATILITY_THRESHOLDS: .*SYMBOL=number"):
        load_settings()
