"""The simulator's enforcement of Binance's limits (values in `cryptomon.binance`), pure: time comes in as
an argument, so that tests run a 24-hour or a 1-minute window in milliseconds.

  RequestWeights   per IP: request weight per window; above it 429 + Retry-After until the window ends;
                   a request inside that wait (past a 0.25 s grace for requests already in flight) is a 418 ban (2 minutes, doubling for a repeat offender,
                   capped at 3 days) with Retry-After until the ban ends.
  Window           a sliding count: incoming WebSocket messages per connection per second, new
                   connections per IP per 5 minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cryptomon.binance import limits
from cryptomon.ratelimit import Window

__all__ = ["RequestWeights", "Verdict", "Window"]


@dataclass(frozen=True)
class Verdict:
    """The answer to one REST request under the weight limits: its status, the weight used, Retry-After."""

    status: int  # 200, 429 or 418
    used: int  # weight used in the current window, for X-MBX-USED-WEIGHT-1M
    retry_after: int = 0  # seconds, for Retry-After (429 and 418)


@dataclass
class _Ip:
    window_start: float = -math.inf
    used: int = 0
    limited_at: float = 0.0  # when the last 429 was answered
    limited_until: float = 0.0  # after a 429: a request before this (past the grace) is a ban
    banned_until: float = 0.0
    bans: int = 0


class RequestWeights:
    """Binance's request-weight limit per IP, with 429 + Retry-After above it and 418 bans for repeat callers."""

    def __init__(
        self,
        limit: int = limits.REQUEST_WEIGHT_PER_MINUTE,
        window: float = 60.0,
        ban_seconds: float = limits.BAN_MIN_SECONDS,
        max_ban_seconds: float = limits.BAN_MAX_SECONDS,
        grace: float = 0.25,
    ):
        self.limit = limit
        self.window = window
        self.ban_seconds = ban_seconds
        self.max_ban_seconds = max_ban_seconds
        # requests arriving within `grace` seconds of a 429 were in flight when it was sent: another 429,
        # not a ban (a client cannot take back what it sent before the answer reached it)
        self.grace = grace
        self._ips: dict[str, _Ip] = {}
        self.counts = {429: 0, 418: 0}

    def charge(self, ip: str, weight: int, now: float) -> Verdict:
        st = self._ips.setdefault(ip, _Ip())
        start = now - now % self.window  # windows aligned like Binance's minutes
        if start != st.window_start:
            st.window_start, st.used = start, 0
        if now < st.banned_until:
            return self._refuse(418, st, st.banned_until - now)
        if now < st.limited_until and now - st.limited_at < self.grace:
            return self._refuse(429, st, st.limited_until - now)  # sent before the client could know
        if now < st.limited_until:  # kept calling after a 429: banned
            st.bans += 1
            ban = min(self.max_ban_seconds, self.ban_seconds * 2 ** (st.bans - 1))
            st.banned_until = now + ban
            return self._refuse(418, st, ban)
        if st.used + weight > self.limit:
            st.limited_at, st.limited_until = now, start + self.window
            return self._refuse(429, st, st.limited_until - now)
        st.used += weight
        return Verdict(200, st.used)

    def _refuse(self, status: int, st: _Ip, wait: float) -> Verdict:
        self.counts[status] += 1
        return Verdict(status, st.used, max(1, math.ceil(wait)))

    def used(self, ip: str) -> int:
        st = self._ips.get(ip)
        return st.used if st else 0
