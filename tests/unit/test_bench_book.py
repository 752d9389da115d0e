"""The order-book benchmark's short version: the book stage's books on the simulated whole market (a
share of it, for two seconds) equal cryptofeed's, built by its own Binance depth handler from the same
frames and snapshots (an implementation we did not write), and every bookTicker check passes."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import bench_module

ROOT = Path(__file__).resolve().parents[2]
book = bench_module("book")


def test_the_book_stage_and_cryptofeed_end_with_the_same_books_on_the_simulated_market():
    result = book.measure(book.simulated(40, 2.0))
    ours, equal = result["cryptomon_every_record"], result["books_equal_to_cryptofeed"]
    assert result["records"]["symbols"] == 40 and result["records"]["diffs"] > 40 * 2
    assert equal == {"agree": 40, "differ": []}
    assert ours["books_synced"] == 40 and ours["rows"] >= 40 * 2
    assert ours["bookticker_checks"] > 100 and ours["bookticker_mismatches"] == 0
