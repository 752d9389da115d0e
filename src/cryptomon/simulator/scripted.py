"""Scripted market runs with explicit event times: the same market model as the simulator, driven by a
list of phases instead of the wall clock. Tests, benchmarks and demos use it to put exact windows of
calm, volatility bursts, volume spikes and spread blow-outs into Kafka in seconds."""

from __future__ import annotations

from dataclasses import dataclass

from cryptomon.simulator.market import Conditions, Market


@dataclass(frozen=True)
class Span:
    """A stretch of a scripted run: how many seconds, under which conditions."""

    seconds: float
    conditions: Conditions = Conditions()


def scripted_events(
    symbols: tuple[str, ...],
    start_ms: int,
    spans: list[Span],
    steps_per_second: float = 1.0,
    seed: int = 1,
    ingestion_delay_ms: int = 5,
) -> list[tuple[str, dict]]:
    """[(kind, payload)] in time order, each payload carrying `ingestion_timestamp` = event time + delay.
    Leaving a volatile span snaps prices back to their anchor, as a calm market after a shock would."""
    market = Market(symbols, seed=seed)
    out: list[tuple[str, dict]] = []
    t = float(start_ms)
    step_ms = 1000.0 / steps_per_second
    for span in spans:
        end = t + span.seconds * 1000
        while t < end:
            for sym in symbols:
                for kind, payload in market.step(sym, int(t), span.conditions):
                    payload["ingestion_timestamp"] = int(t) + ingestion_delay_ms
                    out.append((kind, payload))
            t += step_ms
        if span.conditions.volatility != 1.0:
            for st in market.state.values():
                st.offset = 0.0
    return out
