"""The ingestion's pure parts: symbol universe and sharding, the REST weight budget, the durable state."""

from __future__ import annotations

import orjson
import pytest

from cryptomon.binance.streams import streams_of
from cryptomon.ingestion import selection, state
from cryptomon.ingestion.rest_client import RestBudget
from cryptomon.ingestion.sequences import SequenceTracker
from cryptomon.settings import SettingsError, load_settings, parse_instance

# ---------------------------------------------------------------- universe


def test_patterns_resolve_against_trading_symbols_only():
    listed = {"BTCUSDT": "TRADING", "ETHUSDT": "TRADING", "ETHBTC": "TRADING", "OLDUSDT": "BREAK"}
    assert selection.resolve(["*USDT"], listed) == ["BTCUSDT", "ETHUSDT"]
    assert selection.resolve(["ALL"], listed) == ["BTCUSDT", "ETHBTC", "ETHUSDT"]
    assert selection.resolve(["ETH*", "BTCUSDT"], listed) == ["BTCUSDT", "ETHBTC", "ETHUSDT"]
    assert selection.resolve(["XYZUSDT"], {}) == ["XYZUSDT"]  # a plain name needs no exchangeInfo


def test_rendezvous_gives_every_symbol_exactly_one_owner_and_moves_few_when_n_grows():
    symbols = [f"S{i}USDT" for i in range(400)]
    shares = [selection.mine(symbols, i, 2) for i in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(symbols) and not set(shares[0]) & set(shares[1])
    assert 150 < len(shares[0]) < 250  # roughly even
    moved = sum(selection.owner(s, 2) != selection.owner(s, 3) for s in symbols)
    assert moved == sum(selection.owner(s, 3) == 2 for s in symbols)  # only what the new instance takes


def test_streams_are_split_within_1024_per_connection_and_a_symbol_stays_whole():
    symbols = [f"S{i:03d}USDT" for i in range(400)]
    groups = selection.shard(symbols, 1024)
    assert [len(g) for g in groups] == [341, 59]  # 1,023 and 177 streams
    assert sorted(s for g in groups for s in g) == sorted(symbols)
    assert [len(g) for g in selection.shard(symbols, 30)] == [10] * 40
    assert streams_of("BTCUSDT") == ["btcusdt@trade", "btcusdt@aggTrade", "btcusdt@bookTicker"]


def test_instance_setting():
    assert parse_instance("1/2") == (1, 2)
    for bad in ("2/2", "x/2", "1", "0/0"):
        with pytest.raises(ValueError):
            parse_instance(bad)
    with pytest.raises(SettingsError, match="CRYPTOMON_INGEST_INSTANCE"):
        load_settings(ingest_instance="3/2")
    assert load_settings(symbols="*usdt,BTCUSDT").symbols == ("*USDT", "BTCUSDT")


# ---------------------------------------------------------------- REST budget


def test_budget_spends_at_most_its_weight_per_window_then_waits_for_the_next():
    b = RestBudget(budget=100, window=60.0)
    assert [b.reserve(25, 120.0 + i) for i in range(4)] == [0.0] * 4
    assert b.reserve(25, 130.0) == pytest.approx(50.0)  # until the window starting at 180
    assert b.reserve(25, 180.0) == 0.0


def test_budget_takes_the_exchanges_count_and_holds_everything_after_429_or_418():
    b = RestBudget(budget=100, window=60.0)
    b.observe(90, 10.0)  # other clients on the IP used most of it
    assert b.reserve(25, 11.0) > 0
    b.block(429, 30.0, 70.0)
    assert b.reserve(1, 70.0) == pytest.approx(30.0) and b.reserve(1, 99.9) > 0  # nothing inside Retry-After
    assert b.reserve(1, 100.0) == 0.0
    b.block(418, 120.0, 200.0)
    assert b.reserve(1, 319.0) > 0 and b.reserve(1, 320.0) == 0.0
    assert b.limited == {429: 1, 418: 1}


def test_deferrable_requests_take_their_share_while_urgent_work_is_declared_and_all_of_it_after():
    b = RestBudget(budget=100, window=60.0, deferrable_share=0.25)
    b.declare(3)  # the backfill has 3 gaps due
    assert [b.reserve(10, 60.0 + i, deferrable=True) for i in range(2)] == [0.0, 0.0]
    assert b.reserve(10, 62.0, deferrable=True) == pytest.approx(1.0)  # 30 > 25: looks again in a second
    assert b.reserve(10, 119.5, deferrable=True) == pytest.approx(0.5)  # never past the window's end
    assert [b.reserve(20, 63.0 + i) for i in range(4)] == [0.0] * 4  # urgent work has the other 80
    assert b.reserve(1, 70.0) == pytest.approx(50.0) and b.used == 100
    assert b.reserve(10, 120.0, deferrable=True) == 0.0  # a new window: a new share
    b.declare(0)  # the backfill is done: the rest of the window to whoever comes
    assert [b.reserve(10, 121.0 + i, deferrable=True) for i in range(9)] == [0.0] * 9
    assert b.reserve(10, 131.0, deferrable=True) == pytest.approx(49.0) and b.used == 100


def test_urgent_work_is_not_held_by_the_share_and_a_429_holds_both():
    b = RestBudget(budget=100, window=60.0, deferrable_share=0.0)
    b.declare(1)
    assert b.reserve(5, 0.0, deferrable=True) == pytest.approx(1.0)  # share 0: snapshots wait out the backfill
    assert b.reserve(100, 0.5) == 0.0
    b.block(429, 10.0, 1.0)
    b.declare(0)
    assert b.reserve(5, 2.0, deferrable=True) == pytest.approx(9.0) and b.reserve(5, 2.0) == pytest.approx(9.0)


# ---------------------------------------------------------------- durable state


def test_tracker_state_round_trip_with_open_gaps():
    t = SequenceTracker()
    for seq in (1, 2, 5, 9):
        t.observe(("BTCUSDT", "trade"), seq)
    last, gaps = t.state()[("BTCUSDT", "trade")]
    assert (last, gaps) == (9, [[3, 4], [6, 8]])
    key = state.encode_key(("BTCUSDT", "trade"))
    decoded = state.decode(key, orjson.dumps({"last": last, "gaps": gaps}))
    assert decoded == (("BTCUSDT", "trade"), (9, [[3, 4], [6, 8]]))
    restarted = SequenceTracker()
    restarted.seed(*decoded[0:1], *decoded[1])
    assert restarted.pending() == [(("BTCUSDT", "trade"), 3, 4), (("BTCUSDT", "trade"), 6, 8)]
    assert restarted.observe(("BTCUSDT", "trade"), 12) == "new"  # 10..11 missed while down: a gap too
    assert [g[1:] for g in restarted.pending()] == [(3, 4), (6, 8), (10, 11)]
    assert state.decode(key, b"not json") is None and state.decode(None, b"{}") is None


def test_merge_trusts_the_data_topic_where_it_has_recent_messages():
    saved = {("A", "trade"): (100, [[50, 60], [90, 95]]), ("B", "trade"): (7, [])}
    tail = {("A", "trade"): 92, ("C", "aggTrade"): 3}
    assert state.merge(saved, tail) == {
        ("A", "trade"): (92, [[50, 60]]),  # the state was ahead of what Kafka holds
        ("B", "trade"): (7, []),
        ("C", "aggTrade"): (3, []),
    }


class CountingSink:
    """Stands in for KafkaSink's counts (produced, delivered): the publisher's decision is what is tested."""

    def __init__(self):
        self.produced = 0
        self.delivered = 0
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic, key, value):
        self.produced += 1
        self.sent.append((topic, key, value))

    def settled(self, mark):
        return self.delivered >= mark


def test_state_is_published_only_after_the_data_before_it_is_delivered_and_only_when_changed():
    sink, t = CountingSink(), SequenceTracker()
    pub = state.StatePublisher(sink, "binance.ingest_state", t)  # type: ignore[arg-type]
    t.observe(("A", "trade"), 1)
    sink.produced = 10  # 10 events produced before the first snapshot
    assert pub.tick() == 0  # snapshot taken
    sink.delivered = 9
    assert pub.tick() == 0  # one event still in flight: nothing published
    sink.delivered = 10
    assert pub.tick() == 1 and orjson.loads(sink.sent[-1][2])["last"] == 1
    sink.delivered = sink.produced
    assert pub.tick() == 0  # nothing changed since
    t.observe(("A", "trade"), 4)
    sink.delivered = sink.produced
    pub.tick()  # snapshot of the change
    sink.delivered = sink.produced
    assert pub.tick() == 1 and orjson.loads(sink.sent[-1][2])["gaps"] == [[2, 3]]
