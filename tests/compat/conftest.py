"""The compatibility suite runs real Binance client libraries (the `compat` extra) against `cryptomon feed
sim`, changing nothing but their base URLs and market-type options. One simulator serves the module: a
whole market of 20 TRADING USDT pairs (4 more in BREAK), trading from the start; a second one serves
wss:// and https:// with a certificate made for the test, for clients that refuse ws:// (cryptofeed)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.helpers import free_port, get_json, running

SIM_ARGS = ["--market", "whole", "--whole-size", "20", "--rate", "200", "--no-wait-for-client", "--book-updates", "2"]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def exchange():
    """host:port of a running simulator (plain ws:// and http://)."""
    port = free_port()
    with running("compat-sim", ["feed", "sim", "--port", str(port), *SIM_ARGS], _env()):
        base = f"127.0.0.1:{port}"
        wait_for(lambda: get_json(f"http://{base}/sim/stats")[0] == 200, 30, what="the simulator")
        wait_for(lambda: get_json(f"http://{base}/sim/stats")[1]["symbols"]["BTCUSDT"]["steps"] > 5, 30,
                 what="the first trades")  # fmt: skip
        yield base


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cryptomon-sim")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "sim.pem", folder / "sim.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_exchange(tmp_path_factory):
    """(host:port, certificate) of a simulator serving wss:// and https://."""
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    port = free_port()
    args = ["feed", "sim", "--port", str(port), *SIM_ARGS, "--tls-cert", str(cert), "--tls-key", str(key)]
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
