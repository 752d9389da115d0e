"""Long-lived asyncio tasks kept alive: a task that dies of an unexpected error is logged, counted and
started again with backoff, so that one bad input or bug costs a restart of that task, never the process's
stream. Health endpoints show each task's restarts and last error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptomon.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass
class TaskState:
    """One kept task: is it running, how often it was restarted, its last error."""

    running: bool = False
    restarts: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict:
        return {"running": self.running, "restarts": self.restarts, "last_error": self.last_error}


class TaskKeeper:
    """Starts named tasks and restarts each one that raises (1 s doubling to 60 s, reset after 60 s of life);
    a task that returns is done. Cancellation (the process stopping) ends a task for good."""

    def __init__(self, backoff_initial: float = 1.0, backoff_max: float = 60.0):
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.states: dict[str, TaskState] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run `factory()` as task `name`, kept alive; returns the asyncio task (cancel it to stop)."""
        state = self.states.setdefault(name, TaskState())
        return asyncio.get_running_loop().create_task(self._keep(name, factory, state), name=name)

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]], state: TaskState) -> None:
        backoff = Backoff(self.backoff_initial, self.backoff_max, reset_after=60.0)
        while True:
            started = time.monotonic()
            state.running = True
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.restarts += 1
                state.last_error = repr(exc)[:500]
                backoff.success(time.monotonic() - started)
                delay = backoff.next_delay()
                log.exception("task %s died (%r): restart %d in %.1fs", name, exc, state.restarts, delay)
            finally:
                state.running = False
            await asyncio.sleep(delay)

    def restarts(self) -> int:
        return sum(s.restarts for s in self.states.values())
