"""Binance's protocol as cryptomon.binance defines it: stream names and URLs, payload validation, REST rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptomon.binance.schema import agg_trade_from_rest, trade_from_rest, validate_payload
from cryptomon.binance.streams import combined_stream_url, split_stream, stream_names, streams_of
from cryptomon.errors import BadData

PAYLOADS = json.loads((Path(__file__).parent / "resources" / "binance_payloads.json").read_text())
TRADE, AGG, BOOK = PAYLOADS["trade"], PAYLOADS["aggTrade"], PAYLOADS["bookTicker"]


def test_combined_stream_url_lists_every_symbol_and_kind():
    url = combined_stream_url("wss://stream.binance.com:9443/stream", stream_names(("BTCUSDT", "ETHUSDT")))
    assert url == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@aggTrade/btcusdt@bookTicker/"
        "ethusdt@trade/ethusdt@aggTrade/ethusdt@bookTicker"
    )


def test_stream_names_split_back_into_symbol_and_kind():
    assert split_stream("btcusdt@depth@100ms") == ("BTCUSDT", "depth@100ms")
    assert [split_stream(s) for s in streams_of("ETHUSDT")] == [
        ("ETHUSDT", "trade"),
        ("ETHUSDT", "aggTrade"),
        ("ETHUSDT", "bookTicker"),
    ]


@pytest.mark.parametrize(
    ("p", "q"),
    [("0.00000001", "99999999999.99999999"), ("10000000.00000000", "0.00000001"), ("0.00000812", "92233720368")],
)
def test_the_extremes_of_binance_prices_and_quantities_are_accepted_as_sent(p, q):
    data = {**TRADE, "p": p, "q": q}
    assert validate_payload("trade", data, "BTCUSDT") == "BTCUSDT"
    assert (data["p"], data["q"]) == (p, q)


@pytest.mark.parametrize("kind", ["trade", "aggTrade", "bookTicker"])
def test_the_documented_payloads_are_valid(kind):
    assert validate_payload(kind, PAYLOADS[kind]) == PAYLOADS[kind]["s"]


def test_rest_rows_become_stream_payloads():
    t = trade_from_rest("BTCUSDT", PAYLOADS["rest_historical_trade"])
    assert (t.kind, t.seq, t.data["p"], t.data["T"], t.data["m"]) == ("trade", 28457, "4.00000100", 1499865549590, True)
    a = agg_trade_from_rest("BTCUSDT", PAYLOADS["rest_agg_trade"])
    assert (a.kind, a.seq, a.data["f"], a.data["e"]) == ("aggTrade", 26129, 27781, "aggTrade")
    with pytest.raises(BadData):
        trade_from_rest("BTCUSDT", {"id": "x", "price": "1", "qty": "1", "time": 1, "isBuyerMaker": True})
