"""The ingestion's REST client for Binance: whole bodies, one request-weight budget, and no request while
the exchange has said to wait.

Binance counts request weight per IP per minute (`limits.REQUEST_WEIGHT_PER_MINUTE`), reports the count
in `X-MBX-USED-WEIGHT-1M` on every answer, answers 429 with `Retry-After` above the limit and bans an IP
that keeps calling (418, 2 minutes up to 3 days). So every REST call of the process goes through one
`RestBudget`: it spends at most `budget` weight per minute (the exchange's count, read from each answer,
overrides the local estimate: other processes on the IP count too), and after a 429 or a 418 it lets no
request out until `Retry-After` has passed. The budget is pure (time is an argument) and unit-tested.

Two kinds of work share the budget, and they are not equal. The backfill's pages fill trades the database
has not got: a late one delays every metric of its windows and, past the retention age, is set aside. A
depth snapshot resyncs a book, which can wait (its diffs are kept meanwhile). After a cut both want the
whole budget at once (the whole market: ~11,600 weight of backfill, 20,000 of snapshots, at 3,000 a
minute), so the backfiller declares its open gaps (`declare`) and, while it has any, a deferrable request
gets at most `deferrable_share` of a window's weight: the books still move, the backfill keeps the rest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import aiohttp
import orjson

from cryptomon.binance import limits
from cryptomon.errors import Unavailable

log = logging.getLogger(__name__)

MAX_REST_BYTES = 16 << 20  # a page of 1,000 trades is ~170 KB; the whole market's exchangeInfo a few MB


class RestError(Unavailable):
    """An answer that is not data: an HTTP error, Binance's {"code", "msg"}, a body cut or too large."""

    def __init__(self, status: int, message: str, code: int | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.code = status, code


class RateLimited(RestError):
    """429 or 418: no request may be sent before `retry_after` seconds."""

    def __init__(self, status: int, retry_after: float, message: str):
        super().__init__(status, message)
        self.retry_after = retry_after


DEFERRED_RECHECK_SECONDS = 1.0  # a deferred request looks again this soon: the backfill may have finished


class RestBudget:
    """The process's REST request weight per minute: what may be sent now, and the wait after a 429/418."""

    def __init__(
        self,
        budget: int = limits.REQUEST_WEIGHT_PER_MINUTE // 2,
        window: float = 60.0,
        deferrable_share: float = 0.25,
    ):
        self.budget = budget
        self.window = window
        self.deferrable_share = deferrable_share
        self.window_start = -1.0
        self.used = 0  # weight used in the current window, as far as this process knows
        self.deferrable_used = 0  # of which by deferrable requests
        self.urgent = 0  # work declared that deferrable requests yield to (the backfill's open gaps)
        self.blocked_until = 0.0  # after a 429/418: nothing is sent before this
        self.limited = {429: 0, 418: 0}

    def _roll(self, now: float) -> None:
        start = now - now % self.window
        if start != self.window_start:
            self.window_start, self.used, self.deferrable_used = start, 0, 0

    def declare(self, urgent: int) -> None:
        """How much urgent work is waiting now (0: none, deferrable requests may take the whole budget)."""
        self.urgent = urgent

    def reserve(self, weight: int, now: float, deferrable: bool = False) -> float:
        """0 when a request of `weight` may go now (and it is counted); otherwise seconds to wait. A
        deferrable request, while urgent work is declared, fits in `deferrable_share` of the window or waits."""
        if now < self.blocked_until:
            return self.blocked_until - now
        self._roll(now)
        window_left = self.window_start + self.window - now
        if deferrable and self.urgent and self.deferrable_used + weight > self.budget * self.deferrable_share:
            return min(DEFERRED_RECHECK_SECONDS, window_left)
        if self.used + weight > self.budget:
            return window_left
        self.used += weight
        if deferrable:
            self.deferrable_used += weight
        return 0.0

    def observe(self, used: int | None, now: float) -> None:
        """The exchange's count for the IP (X-MBX-USED-WEIGHT-1M) replaces the local estimate."""
        if used is not None:
            self._roll(now)
            self.used = max(self.used, used)

    def block(self, status: int, retry_after: float, now: float) -> None:
        """After a 429 or 418: nothing is sent for `retry_after` seconds (Retry-After), counted per status."""
        self.limited[status] = self.limited.get(status, 0) + 1
        self.blocked_until = max(self.blocked_until, now + retry_after)


class RestClient:
    """Binance's REST API within the budget: whole bodies (bounded), Binance's errors as RestError."""

    def __init__(
        self,
        base_url: str,
        budget: RestBudget,
        api_key: str = "",
        max_bytes: int = MAX_REST_BYTES,
        timeout: float = 30.0,
        clock=time.time,
    ):
        self.base_url = base_url
        self.budget = budget
        self.max_bytes = max_bytes
        self.clock = clock
        self.requests = 0
        self.errors = 0
        self.last_used_weight: int | None = None
        headers = {"X-MBX-APIKEY": api_key} if api_key else {}
        self._session = aiohttp.ClientSession(base_url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout))

    async def close(self) -> None:
        await self._session.close()

    async def get(self, path: str, params: dict[str, Any], weight: int | None = None, deferrable: bool = False) -> Any:
        """The JSON of GET path?params, once the budget allows it (`weight`: the request's, when it depends
        on the parameters, as /api/v3/depth's on `limit`; `deferrable`: it yields to urgent work, see
        RestBudget). Raises RateLimited, RestError, aiohttp.ClientError or asyncio.TimeoutError; never sends
        inside a Retry-After."""
        weight = limits.WEIGHTS.get(path, 1) if weight is None else weight
        while (wait := self.budget.reserve(weight, self.clock(), deferrable)) > 0:  # noqa: ASYNC110 - waits on the clock
            await asyncio.sleep(min(wait, 5.0))
        self.requests += 1
        async with self._session.get(path, params=params) as resp:
            used = resp.headers.get(limits.USED_WEIGHT_HEADER)
            if used is not None and used.isdigit():
                self.last_used_weight = int(used)
                self.budget.observe(int(used), self.clock())
            if resp.status in (429, 418):
                retry_after = _seconds(resp.headers.get("Retry-After"), default=60.0)
                self.budget.block(resp.status, retry_after, self.clock())
                log.error(
                    "exchange answered %d (%s) to %s: no REST request for %.0fs",
                    resp.status,
                    "IP banned" if resp.status == 418 else "request weight limit",
                    path,
                    retry_after,
                )
                raise RateLimited(resp.status, retry_after, f"{path}: retry after {retry_after:.0f}s")
            body = await self._read(resp)
            if resp.status != 200:
                self.errors += 1
                code, msg = _binance_error(body)
                raise RestError(resp.status, f"{path}: {msg}", code)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self.errors += 1
            raise RestError(200, f"{path}: body is not JSON ({exc}; {len(body)} bytes)") from None

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body (it may come in many pieces, with pauses between them), at most max_bytes."""
        if resp.content_length is not None and resp.content_length > self.max_bytes:
            raise RestError(resp.status, f"body of {resp.content_length} bytes, more than {self.max_bytes}")
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_bytes:
                raise RestError(resp.status, f"body larger than {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _seconds(value: str | None, default: float) -> float:
    """Retry-After in seconds: at least 1, at most Binance's longest ban (3 days): `inf`, `nan` or a huge
    number must not block the REST client for ever."""
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        return default
    return min(float(limits.BAN_MAX_SECONDS), max(1.0, seconds)) if math.isfinite(seconds) else default


def _binance_error(body: bytes) -> tuple[int | None, str]:
    try:
        d = orjson.loads(body)
        return d.get("code"), str(d.get("msg"))
    except (orjson.JSONDecodeError, AttributeError):
        return None, body[:200].decode("utf-8", "replace")
