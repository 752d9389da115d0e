"""The worker's COPY text: read back field by field (an independent reading, with datetime for the times),
it is exactly the rows; a field COPY would misread makes the batch go by INSERT instead."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptomon.names import BOOK_TICKER, TABLE_COLUMNS, TRADES
from cryptomon.worker.copytext import COPY_SQL, copy_text, timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Binance's first trade (2017-07-14) to the year 2100, in ms
times = st.integers(1_500_000_000_000, 4_102_444_800_000)
symbols = st.from_regex(r"[A-Z0-9]{2,20}", fullmatch=True)
decimals = st.from_regex(r"[0-9]{1,12}(\.[0-9]{1,8})?", fullmatch=True)
ids = st.integers(0, 2**63 - 1)
trade_rows = st.tuples(
    times, symbols, st.sampled_from(["trade", "aggTrade"]), ids, decimals, decimals, st.booleans(), times, st.booleans()
)
book_rows = st.tuples(times, symbols, ids, decimals, decimals, decimals, decimals)


def read_time(text: str) -> int:
    """`YYYY-MM-DD HH:MM:SS.mmm+00` back to epoch ms, by datetime (not by the code under test)."""
    assert text.endswith("+00")
    when = datetime.strptime(text[:-3], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(milliseconds=1)


def read_back(table: str, data: bytes) -> list[tuple]:
    times = (0, 7) if table == TRADES else (0,)
    flags = (6, 8) if table == TRADES else ()
    ints = (3,) if table == TRADES else (2,)
    out = []
    for line in data.decode().split("\n")[:-1]:
        fields = line.split("\t")
        assert len(fields) == len(TABLE_COLUMNS[table])
        out.append(
            tuple(
                read_time(f) if i in times else {"t": True, "f": False}[f] if i in flags else int(f) if i in ints else f
                for i, f in enumerate(fields)
            )
        )
    return out


@given(st.lists(trade_rows, min_size=1, max_size=50))
def test_trades_read_back_as_sent(rows):
    data = copy_text(TRADES, rows)
    assert data is not None and data.endswith(b"\n")
    assert read_back(TRADES, data) == rows


@given(st.lists(book_rows, min_size=1, max_size=50))
def test_book_tickers_read_back_as_sent(rows):
    data = copy_text(BOOK_TICKER, rows)
    assert data is not None
    assert read_back(BOOK_TICKER, data) == rows


def test_times_at_the_edges_of_a_second_and_a_leap_day():
    assert timestamp(1_700_000_000_000) == "2023-11-14 22:13:20.000+00"
    assert timestamp(1_700_000_000_999) == "2023-11-14 22:13:20.999+00"
    assert timestamp(1_709_208_000_001) == "2024-02-29 12:00:00.001+00"
    assert timestamp(1_500_000_000_050) == "2017-07-14 02:40:00.050+00"


@pytest.mark.parametrize("bad", ["A\tB", "A\nB", "A\\B", "A\rB", "\\."])
def test_a_field_copy_would_misread_sends_the_batch_by_insert(bad):
    good = (1_700_000_000_000, "BTCUSDT", 1, "1", "2", "3", "4")
    assert copy_text(BOOK_TICKER, [good]) is not None
    assert copy_text(BOOK_TICKER, [good, (good[0], bad, *good[2:])]) is None


def test_the_statement_names_the_columns_in_the_rows_order():
    assert COPY_SQL[TRADES] == f"COPY trades ({', '.join(TABLE_COLUMNS[TRADES])}) FROM STDIN"
    assert TABLE_COLUMNS[TRADES][0] == "event_time" and TABLE_COLUMNS[TRADES][7] == "ingestion_ts"
    assert TABLE_COLUMNS[BOOK_TICKER][0] == "ingestion_ts"
