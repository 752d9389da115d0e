"""The capture formats `feed replay` reads: hftbacktest's `<ns> <frame>` lines (gzip or plain), cryptofeed's
`.ws` recordings, merged by receive time, with event times shifted by whole minutes."""

from __future__ import annotations

import gzip
import os
from collections import Counter
from pathlib import Path

import orjson
import pytest

from cryptomon.simulator.replay import capture_symbols, first_event_ms, read_captures, shift_to_now

REAL = Path(os.environ.get("CRYPTOMON_REAL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data" / "real")
TRADE = {"e": "trade", "E": 1723161255208, "s": "BTCUSDT", "t": 7, "p": "61837.64", "q": "0.1", "T": 1723161255207}
BOOK = {"u": 9, "s": "ETHUSDT", "b": "2683.80", "B": "3.0", "a": "2683.81", "A": "31.4"}


def frame(stream: str, data: dict) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_hftbacktest_lines_gzip_and_cryptofeed_lines_merge_by_receive_time(tmp_path):
    hft = tmp_path / "btc.gz"
    with gzip.open(hft, "wb") as f:
        f.write(b"1723161254000000000 " + frame("btcusdt@trade", TRADE) + b"\n")
        f.write(b'1723161254500000000 {"lastUpdateId": 1, "bids": [], "asks": []}\n')  # a REST snapshot: skipped
        f.write(b"1723161256000000000 " + frame("btcusdt@trade", {**TRADE, "t": 8}) + b"\n")
    cf = tmp_path / "BINANCE.ws.1.0"
    cf.write_bytes(b"wss://stream.binance.com:9443/stream?streams=ethusdt@bookTicker <-> 1723161250.0\n"
                   b"1723161255.25: " + frame("ethusdt@bookTicker", BOOK) + b"\n")  # fmt: skip
    items = list(read_captures([hft, cf]))
    assert [(rx, sym, kind) for rx, sym, kind, _ in items] == [
        (1723161254000, "BTCUSDT", "trade"),
        (1723161255250, "ETHUSDT", "bookTicker"),
        (1723161256000, "BTCUSDT", "trade"),
    ]
    assert items[1][3] == BOOK  # the frame's data exactly as sent
    assert capture_symbols([hft, cf]) == ("BTCUSDT", "ETHUSDT")


def test_event_times_move_by_whole_minutes_and_ids_stay():
    first = 1723161255208  # 23:54:15.208
    now = first + 3 * 86_400_000 + 17 * 60_000 + 50_000  # 3 days, 17 minutes and 50 s later
    shift = shift_to_now(first, now)
    assert shift % 60_000 == 0 and (first + shift) // 60_000 == now // 60_000
    assert shift_to_now(None, now) == 0


def test_shifted_captures_keep_ids_and_move_e_and_t(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_bytes(b"1723161254000000000 " + frame("btcusdt@trade", TRADE) + b"\n")
    assert first_event_ms([path]) == TRADE["E"]
    (_, _, _, d), = read_captures([path], shift_ms=120_000)  # fmt: skip
    assert (d["E"], d["T"], d["t"]) == (TRADE["E"] + 120_000, TRADE["T"] + 120_000, 7)


def test_the_real_cryptofeed_recording_reads_whole():
    path = REAL / "BINANCE_FUTURES.ws.1.0"
    if not path.exists():
        pytest.skip(f"{path} is not there (set CRYPTOMON_REAL_DATA to the folder holding the real captures)")
    kinds = Counter(kind for _, _, kind, _ in read_captures([path]))
    # its README's breakdown (613 + 91 + 764 + 67); the "1,536 frames" there counts the URL line too
    assert kinds == {"bookTicker": 613, "aggTrade": 91, "depth@100ms": 764, "kline_1m": 67}
