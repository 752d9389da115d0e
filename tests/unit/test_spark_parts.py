"""The Spark job's pure parts: when the repair may recompute a window, and where a query starts."""

import orjson


def test_repair_waits_for_sparks_watermark_or_its_silence():
    from datetime import UTC, datetime, timedelta

    from cryptomon.spark.repair import due

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    pending = {("A", t0): t0, ("B", t0 + timedelta(minutes=5)): t0}
    grace = timedelta(seconds=40)
    now = t0 + timedelta(minutes=10)
    # the watermark has passed A's window end (t0 + 1 min) but not B's (t0 + 6 min)
    assert due(pending, t0 + timedelta(minutes=2), now, now, grace) == [("A", t0)]
    assert due(pending, t0 + timedelta(minutes=6), now, now, grace) == sorted(pending)
    # no watermark and Spark silent for more than 5 minutes: by age, once the grace after the end is over
    silent = t0  # last report at t0, 6.5 minutes before
    assert due(pending, None, silent, t0 + timedelta(minutes=6, seconds=30), grace) == [("A", t0)]
    assert due(pending, None, None, now, grace) == sorted(pending)
    # Spark reported a minute ago with an old watermark: wait for it
    assert due(pending, t0, now - timedelta(minutes=1), now, grace) == []


def test_spark_starting_offsets_are_cut_to_the_topics_of_a_query():
    from cryptomon.spark.queries import starting_offsets

    both = '{"a": {"0": 5, "1": -1}, "b": {"0": 7}}'
    assert starting_offsets("earliest", ["a"]) == "earliest"
    assert orjson.loads(starting_offsets(both, ["b"])) == {"b": {"0": 7}}
    assert orjson.loads(starting_offsets(both, ["a", "b"])) == orjson.loads(both)


def test_the_repair_cursor_keeps_up_while_trades_keep_coming():
    """Rounds every 10 s over a market that never stops: five trades a second, Spark's watermark 20 s behind. Each round scans back OVERLAP (30 s) and finds, by the watermark, the
    current minute's windows again. The cursor must stay within about a window plus the watermark of now
    (it used to stay where it was for good, and the scan grew by every round)."""
    from datetime import UTC, datetime, timedelta

    from cryptomon.spark.repair import OVERLAP, WINDOW, due, note_found, scanned_until

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sec = timedelta(seconds=1)
    pending: dict = {}
    cursor = t0
    for r in range(1, 61):  # ten minutes
        now = t0 + (10 * r + 3) * sec
        watermark = now - 20 * sec
        # (event time, written): five trades a second, each written 0.1 s after its event time
        rows = [(t0 + i * sec / 5 - sec / 10, t0 + i * sec / 5) for i in range((10 * r + 3) * 5 + 1)]
        since = cursor - OVERLAP
        flagged: dict = {}
        for event, written in rows:
            if since < written <= now and event < watermark:  # LATE_WINDOWS' second condition
                start = event.replace(second=0, microsecond=0)
                flagged[start] = min(flagged.get(start, written), written)
        note_found(pending, [("BTCUSDT", start, first) for start, first in flagged.items()], [], cursor)
        windows = due(pending, watermark, now, now, timedelta(seconds=40))
        cursor = scanned_until(pending, windows, now)
        for w in windows:
            pending.pop(w)
        assert r < 12 or now - cursor <= WINDOW + 20 * sec, (r, now - cursor)  # was 60 s more every minute
    assert len(pending) <= 2
