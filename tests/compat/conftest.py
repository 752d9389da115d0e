"""The compatibility suite runs real Binance client libraries (the `compat` extra) against `cryptomon feed
sim`, changing nothing but their base URLs and market-type options. One simulator serves the module: a
whole market of 20 TRADING USDT pairs (4 more in BREAK), trading from the start; a second one serves
wss:// and https:// with a certificate made for the test, for clients that refuse ws:// (cryptofeed)."""

from __future__ import annotations

import os

import pytest

from cryptomon.simulator.tls import self_signed
from cryptomon.supervisor import sim_args
from tests.helpers import free_port, get_json, running, wait_for

SIM_ARGS = ["--market", "whole", "--whole-size", "20", "--rate", "200", "--no-wait-for-client", "--book-updates", "2"]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def exchange():
    """host:port of a running simulator (plain ws:// and http://)."""
    port = free_port()
    with running("compat-sim", sim_args(port, *SIM_ARGS), _env()):
        base = f"127.0.0.1:{port}"
        wait_for(lambda: get_json(f"http://{base}/sim/stats")[0] == 200, 30, what="the simulator")
        wait_for(lambda: get_json(f"http://{base}/sim/stats")[1]["symbols"]["BTCUSDT"]["steps"] > 5, 30,
                 what="the first trades")  # fmt: skip
        yield base


@pytest.fixture(scope="module")
def tls_exchange(tmp_path_factory):
    """(host:port, certificate) of a simulator serving wss:// and https://."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    port = free_port()
    args = sim_args(port, *SIM_ARGS, "--tls-cert", str(cert), "--tls-key", str(key))
    with running("compat-sim-tls", args, _env()):
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(cert))

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v3/ping", context=context, timeout=1):
                    return True
            except OSError:
                return False

        wait_for(up, 30, what="the TLS simulator")
        yield f"127.0.0.1:{port}", cert
