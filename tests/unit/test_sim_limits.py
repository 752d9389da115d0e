"""Binance's limits as the simulator enforces them, on a hand-driven clock."""

from __future__ import annotations

from cryptomon.binance import limits
from cryptomon.simulator.enforcement import RequestWeights, Window


def test_weights_accumulate_per_window_and_reset_at_its_end():
    w = RequestWeights(limit=100, window=60.0)
    assert w.charge("a", 25, 120.0).used == 25
    assert w.charge("a", 25, 150.0).used == 50
    assert w.charge("b", 25, 150.0).used == 25  # per IP
    assert w.charge("a", 4, 180.0).used == 4  # a new window at 180 s


def test_over_the_limit_is_429_until_the_window_ends_then_a_call_inside_it_is_a_ban():
    w = RequestWeights(limit=50, window=60.0, ban_seconds=120.0)
    assert w.charge("a", 25, 10.0).status == 200
    assert w.charge("a", 25, 11.0).status == 200
    limited = w.charge("a", 25, 12.0)
    assert (limited.status, limited.used, limited.retry_after) == (429, 50, 48)
    banned = w.charge("a", 1, 30.0)  # inside Retry-After
    assert (banned.status, banned.retry_after) == (418, 120)
    assert w.charge("a", 1, 100.0) == w.charge("a", 1, 100.0)  # still banned, nothing more
    assert w.charge("a", 1, 100.0).retry_after == 50
    assert w.charge("a", 1, 151.0).status == 200  # the ban is over and so is its window
    assert w.counts == {429: 1, 418: 4}


def test_a_client_that_waits_out_retry_after_is_not_banned_and_repeat_bans_double():
    w = RequestWeights(limit=10, window=60.0, ban_seconds=120.0, max_ban_seconds=200.0)
    assert w.charge("a", 11, 0.0).status == 429
    assert w.charge("a", 5, 60.0).status == 200  # waited until the window ended
    assert w.charge("a", 11, 61.0).status == 429
    assert w.charge("a", 1, 62.0).retry_after == 120
    assert w.charge("a", 11, 190.0).status == 429
    assert w.charge("a", 1, 191.0).retry_after == 200  # 240, capped


def test_default_limits_are_binances():
    w = RequestWeights()
    assert (w.limit, w.window, w.ban_seconds) == (6000, 60.0, 120)
    assert limits.depth_weight(100) == 5 and limits.depth_weight(5000) == 250
    assert limits.ticker_24hr_weight(None) == 80 and limits.ticker_weight(1) == 2


def test_window_refuses_the_sixth_message_within_a_second():
    win = Window(limits.MAX_INCOMING_MESSAGES_PER_SECOND, 1.0)
    assert all(win.hit(0.1 * i) for i in range(5))
    assert not win.hit(0.55)
    slow = Window(5, 1.0)
    assert all(slow.hit(0.25 * i) for i in range(40))  # 4 per second, forever


def test_requests_already_in_flight_when_the_429_went_out_are_not_a_ban():
    w = RequestWeights(limit=10, window=60.0, grace=0.25)
    assert w.charge("a", 11, 5.0).status == 429
    assert w.charge("a", 1, 5.1).status == 429  # sent before the client saw the 429
    assert w.charge("a", 1, 5.4).status == 418  # sent after it could have known
