"""Rows of cryptomon.worker.rows as the text of PostgreSQL's COPY (pure logic): what the sink sends first,
since COPY costs PostgreSQL a quarter less CPU a row than INSERT … unnest (docs/design.md).

Times in epoch ms become `YYYY-MM-DD HH:MM:SS.mmm+00` (UTC, whatever the session's time zone); decimals
go as Binance's strings, as in the array literals. Every text field was checked against a pattern on the
way in (symbol: upper-case letters and digits; decimals: digits and a dot), so nothing needs escaping; a
batch whose text does not have exactly one tab per column gap and one newline per row, or has a backslash,
is not sent by COPY at all (`copy_text` returns None and the sink uses its INSERT).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cryptomon.names import BOOK_TICKER, TABLE_COLUMNS, TRADES

COPY_SQL = {table: f"COPY {table} ({', '.join(columns)}) FROM STDIN" for table, columns in TABLE_COLUMNS.items()}

# ".mmm+00" for each millisecond of a second: a list lookup instead of a format per time
_MILLIS = [f".{ms:03d}+00" for ms in range(1000)]
_BOOL = {True: "t", False: "f"}


class _Seconds(dict):
    """`YYYY-MM-DD HH:MM:SS` of an epoch second, in UTC, by subscription (a batch spans a few seconds: almost
    always there; a dict lookup, where a cached function's call costs twice as much). Holds at most 4,096."""

    def __missing__(self, seconds: int) -> str:
        if len(self) >= 4096:
            self.clear()
        text = self[seconds] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
        return text


_SECONDS = _Seconds()


def timestamp(ms: int) -> str:
    """An epoch-ms time as COPY text for a timestamptz column."""
    return _SECONDS[ms // 1000] + _MILLIS[ms % 1000]


def _trades(rows: Sequence[tuple]) -> str:
    sec, millis, flag = _SECONDS, _MILLIS, _BOOL
    return "".join(
        [
            f"{sec[t // 1000]}{millis[t % 1000]}\t{s}\t{e}\t{i}\t{p}\t{q}\t{flag[m]}\t{sec[g // 1000]}{millis[g % 1000]}"
            f"\t{flag[b]}\n"
            for t, s, e, i, p, q, m, g, b in rows
        ]
    )


def _book_ticker(rows: Sequence[tuple]) -> str:
    sec, millis = _SECONDS, _MILLIS
    return "".join(
        [f"{sec[g // 1000]}{millis[g % 1000]}\t{s}\t{u}\t{b}\t{bq}\t{a}\t{aq}\n" for g, s, u, b, bq, a, aq in rows]
    )


RENDERERS: dict[str, Callable[[Sequence[tuple]], str]] = {TRADES: _trades, BOOK_TICKER: _book_ticker}


def copy_text(table: str, rows: Sequence[tuple]) -> bytes | None:
    """The rows as COPY text in COPY_SQL[table]'s column order, or None when the text would not be read
    back as exactly these rows (a field holding a tab, a newline or a backslash)."""
    text = RENDERERS[table](rows)
    gaps = len(TABLE_COLUMNS[table]) - 1
    if text.count("\n") != len(rows) or text.count("\t") != gaps * len(rows) or "\\" in text or "\r" in text:
        return None
    return text.encode()
