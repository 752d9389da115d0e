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
