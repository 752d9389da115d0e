"""Scripted runs of the simulator's market: explicit event times, phases of conditions."""

from cryptomon.simulator.market import Conditions
from cryptomon.simulator.scripted import Span, scripted_events


def test_scripted_events_follow_the_spans():
    ev = scripted_events(("AUSDT",), 60_000, [Span(10), Span(10, Conditions(volume=10.0))], steps_per_second=2.0)
    trades = [p for k, p in ev if k == "trade"]
    assert trades[0]["T"] == 60_000 and all(60_000 <= p["T"] < 80_000 for p in trades)
    assert all(p["ingestion_timestamp"] == p["T"] + 5 for p in trades)
    calm = sum(float(p["q"]) for p in trades if p["T"] < 70_000)
    spiky = sum(float(p["q"]) for p in trades if p["T"] >= 70_000)
    assert spiky > 5 * calm
    assert [k for k, _ in ev].count("bookTicker") == 40  # one per step, 20 s at 2 steps/s
