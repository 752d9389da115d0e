"""What one micro-batch adds to the trade windows: Spark's sums where none of a window's trades was
counted before, otherwise the driver's own, from the window's trades, leaving out the ids counted
already (pure; the design and why it is exact: docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext

from cryptomon.spark import trade_ids
from cryptomon.spark.trade_ids import Range

# p*q has up to 16 + 20 significant digits and a day's sum a few more: Decimal's default 28 would round
EXACT_DIGITS = 80


@dataclass(frozen=True, slots=True)
class Sums:
    """A window's share of one batch: count and exact sums of p*q, q, p, p*p."""

    symbol: str
    window_start: datetime
    n: int
    sum_pq: Decimal
    sum_q: Decimal
    sum_p: Decimal
    sum_pp: Decimal


def needs_rows(w, counted: dict[str, list[Range]]) -> bool:
    """Whether Spark's sums of window row `w` (symbol, n, sums, first_id, last_id) cannot be taken as they
    are: a sum overflowed, its ids are not exactly first..last (a gap, to be filled later), or some of them
    were counted by an earlier batch."""
    return (
        None in (w.sum_pq, w.sum_q, w.sum_p, w.sum_pp)
        or w.n != w.last_id - w.first_id + 1
        or trade_ids.overlaps(counted.get(w.symbol, []), w.first_id, w.last_id)
    )


def minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def plan(windows, rows, counted: dict[str, list[Range]]) -> tuple[list[Sums], dict[str, list[Range]]]:
    """The batch's sums to merge and the counted ranges of every symbol it touched. `windows`: Spark's rows
    (symbol, window_start, n, sum_pq, sum_q, sum_p, sum_pp, first_id, last_id); `rows`: the trades
    (symbol, trade_id, event_time, p, q) of at least every window for which needs_rows(); an id twice in
    them is counted once."""
    out: list[Sums] = []
    new: dict[str, list[Range]] = {}
    slow: set[tuple[str, datetime]] = set()
    for w in windows:
        if needs_rows(w, counted):
            slow.add((w.symbol, w.window_start))
            continue
        out.append(Sums(w.symbol, w.window_start, w.n, w.sum_pq, w.sum_q, w.sum_p, w.sum_pp))
        new.setdefault(w.symbol, []).append((w.first_id, w.last_id))
    acc: dict[tuple[str, datetime], list] = {}
    ids: dict[str, set[int]] = {}
    with localcontext(prec=EXACT_DIGITS):
        for r in rows:
            key = (r.symbol, minute(r.event_time))
            if key not in slow or r.trade_id in ids.get(r.symbol, ()):
                continue
            if trade_ids.contains(counted.get(r.symbol, []), r.trade_id):
                continue
            a = acc.setdefault(key, [0, Decimal(0), Decimal(0), Decimal(0), Decimal(0)])
            a[0] += 1
            a[1] += r.p * r.q
            a[2] += r.q
            a[3] += r.p
            a[4] += r.p * r.p
            ids.setdefault(r.symbol, set()).add(r.trade_id)
    out += [Sums(s, ws, *a) for (s, ws), a in sorted(acc.items())]
    for symbol, got in ids.items():
        new.setdefault(symbol, []).extend(trade_ids.runs(sorted(got)))
    touched = {s for s, _ in slow} | set(new)
    return out, {s: trade_ids.add(counted.get(s, []), new.get(s, [])) for s in sorted(touched)}
