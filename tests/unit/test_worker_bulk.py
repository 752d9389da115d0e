"""A whole batch decoded at once (cryptomon.worker.bulk, through cryptomon.worker.batch) against the contract
alone (orjson + validate_payload, message by message): on batches of real, mutated and hostile records, each
message gives the contract's row or a dead letter with the contract's reason, in Kafka's order; a batch
decoded whole has the COPY text cryptomon.worker.copytext renders for its rows; and real records take that
path (else the speed-up would be gone unseen)."""

from __future__ import annotations

import time

import orjson
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, TIMESTAMP_NOT_AVAILABLE, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptomon.binance import limits
from cryptomon.binance.schema import SEQ_FIELD, Event
from cryptomon.errors import BadData
from cryptomon.ingestion.frames import encode
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.simulator.replay import read_timed
from cryptomon.worker.batch import Batch
from cryptomon.worker.copytext import copy_text
from cryptomon.worker.rows import SKEW_MS, contract_book_row, contract_trade_row
from tests.helpers import real_capture
from tests.hostile import EDGES, NAMES, NOW, names, record, values

CONTRACT = {TRADES: contract_trade_row, BOOK_TICKER: contract_book_row}
GOOD = {kind: record(kind, {}, [], None) for kind in ("trade", "aggTrade", "bookTicker")}


def message(offset: int, value: bytes | None, stamp: int | None) -> Message:
    kind = TIMESTAMP_NOT_AVAILABLE if stamp is None else TIMESTAMP_LOG_APPEND_TIME
    return Message(topic="t", partition=0, offset=offset, key=b"k", value=value, timestamp=(kind, stamp or 0))


def check(table: str, values: list[bytes | None], stamp: int | None) -> Batch:
    """The batch's rows and dead letters are the contract's, message by message; returns the batch."""
    batch = Batch(table, partition=("t", 0))
    for offset, value in enumerate(values):
        batch.append(message(offset, value, stamp), 0.0)
    latest = (stamp if stamp is not None else time.time_ns() // 1_000_000) + SKEW_MS
    rows, letters = [], []
    for offset, value in enumerate(values):
        try:
            rows.append((offset, CONTRACT[table](value, latest, SKEW_MS)))
        except BadData as bad:
            letters.append((offset, str(bad)))
    p = batch.parsed()
    assert [(m.offset(), row) for m, row in zip(p.sources, p.rows, strict=True)] == rows
    # without a Kafka timestamp the bound is the clock when parsed, which the reason's text quotes
    said = (lambda error: error) if stamp is not None else (lambda error: error.split(":")[0])
    assert [(d.offset, said(d.error)) for d in p.poison] == [(offset, said(error)) for offset, error in letters]
    if p.text is not None:
        assert not letters and p.text == copy_text(table, p.rows)
    return batch


def test_every_field_at_every_edge_alone_or_between_good_records():
    for table in (TRADES, BOOK_TICKER):
        for kind in ("trade", "aggTrade", "bookTicker"):
            for name in NAMES:
                for value in EDGES:
                    bad = record(kind, {name: value}, [], None)
                    for stamp in (NOW - SKEW_MS, NOW):
                        check(table, [bad], stamp)
                        check(table, [GOOD[kind], bad, GOOD[kind]], stamp)


@settings(max_examples=600, deadline=None)
@given(
    table=st.sampled_from([TRADES, BOOK_TICKER]),
    batch=st.lists(
        st.tuples(
            st.sampled_from(["trade", "aggTrade", "bookTicker"]),
            st.dictionaries(names, values, max_size=2),
            st.lists(names, max_size=1),
            st.none() | st.tuples(names, values),
        ),
        min_size=1,
        max_size=6,
    ),
    stamp=st.sampled_from([None, NOW - SKEW_MS, NOW - SKEW_MS - 1, NOW]),
)
def test_a_batch_gives_the_contracts_rows_and_reasons_message_by_message(table, batch, stamp):
    check(table, [record(*r) for r in batch], stamp)


@settings(max_examples=300, deadline=None)
@given(
    table=st.sampled_from([TRADES, BOOK_TICKER]),
    others=st.lists(st.none() | st.binary(max_size=80) | st.sampled_from(list(GOOD.values())), max_size=4),
)
def test_any_bytes_among_good_records_give_the_contracts_answer(table, others):
    good = GOOD["bookTicker" if table == BOOK_TICKER else "trade"]
    check(table, [good, *others, good], NOW)


def test_records_run_together_or_cut_apart_are_not_taken_for_one_another():
    """Two records in one message, one cut over two, an empty or absent value: each message is judged alone
    (a decode of the batch's values joined would count the same number of records and shift them)."""
    trade, agg = GOOD["trade"], GOOD["aggTrade"]
    for batch in (
        [trade + b" " + agg, b"", trade],
        [trade + b"\n" + agg, None, trade],
        [trade[:40], trade[40:], trade + b"," + agg],
        [b"[" + trade + b"]", trade],
        [trade, b" " + trade + b"\n"],  # JSON's own whitespace: the contract takes it
    ):
        check(TRADES, batch, NOW)


def test_a_bad_record_leaves_the_batch_to_the_record_by_record_path_and_only_it_is_set_aside():
    bad = orjson.dumps({**orjson.loads(GOOD["trade"]), "p": "1e5"})  # NUMERIC would take it; the contract does not
    batch = check(TRADES, [GOOD["trade"], bad, GOOD["aggTrade"]], NOW)
    assert batch.copy_text is None and len(batch.rows) == 2 and batch.poison[0].offset == 1


def test_real_records_are_decoded_whole():
    values: dict[str, list[bytes]] = {TRADES: [], BOOK_TICKER: []}
    for name in ("btcusdt_20240808.gz", "ethusdt_20240808.gz"):
        for _, symbol, kind, data in read_timed(real_capture(name)):
            if kind in ("trade", "aggTrade", "bookTicker"):
                ingestion_ms = data.get("E", data.get("T", limits.FIRST_EVENT_MS)) + 3
                raw = encode(Event(kind, symbol, data[SEQ_FIELD[kind]], data), ingestion_ms)
                values[BOOK_TICKER if kind == "bookTicker" else TRADES].append(raw)
    for table, raws in values.items():
        assert len(raws) > 1000, table
        for i in range(0, len(raws), 500):
            batch = check(table, raws[i : i + 500], None)
            assert batch.copy_text is not None and not batch.poison, (table, i)
