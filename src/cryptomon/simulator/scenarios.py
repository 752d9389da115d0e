"""Named scenarios for the simulator: sequences of phases with market conditions and faults.

A phase's faults are applied when it starts: `drop` closes every connection, `stall` silences them for
N seconds, `malformed` / `duplicate` / `reorder` inject N such frames among the next good ones.
The last phase lasts until the simulator stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cryptomon.simulator.market import Conditions

CALM = Conditions()


@dataclass(frozen=True)
class Phase:
    """A named stretch of a scenario: how long, the market conditions, the faults injected."""

    name: str
    seconds: float
    conditions: Conditions = CALM
    faults: dict[str, float] = field(default_factory=dict)


FOREVER = math.inf

SCENARIOS: dict[str, list[Phase]] = {
    # a quiet market: no Spark flag should fire
    "calm": [Phase("calm", FOREVER)],
    # every alert path: volatility burst, volume spike, spread blow-out, one minute each after a calm start
    "risk": [
        Phase("calm", 120),
        Phase("volatility-burst", 60, Conditions(volatility=30.0)),
        Phase("calm-2", 60),
        Phase("volume-spike", 60, Conditions(volume=12.0)),
        Phase("spread-blowout", 30, Conditions(spread=12.0)),
        Phase("calm-3", FOREVER),
    ],
    # every ingestion fault path
    "faults": [
        Phase("calm", 5),
        Phase("malformed", 5, faults={"malformed": 10}),
        Phase("duplicates", 5, faults={"duplicate": 10, "reorder": 10}),
        Phase("drop", 10, faults={"drop": 1}),
        Phase("stall", 20, faults={"stall": 15}),
        Phase("calm-2", FOREVER),
    ],
}
