"""How a stage is stopped: SIGTERM (`cryptomon up`, systemd, a container's stop) or SIGINT (Ctrl-C, sent to
the terminal's whole process group) sets the stage's stop event, and the stage ends the work in flight
before it exits. A child doing work its parent waits for ignores both: the parent stops after it."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(event: threading.Event) -> None:
    """SIGTERM and SIGINT set `event` (instead of killing the process or raising KeyboardInterrupt)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: event.set())


def ignore_stop_signals() -> None:
    """SIGTERM and SIGINT do nothing: for a child whose parent stops after it."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
