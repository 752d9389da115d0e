"""Run one function in a fresh process and return what it returns.

A long-lived process that reads millions of rows into Python objects and Arrow buffers now and then keeps
part of each peak: freed memory that the allocators (CPython's arenas, glibc's malloc, Arrow's pools) do not
give back. A process that ends gives back all of it. The child is started with `spawn` (a new interpreter, not
a fork of a process with threads), its arguments and result pickled through a pipe; it logs to the parent's
standard error with the parent's level and format.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class ChildFailed(RuntimeError):
    """The function raised in the child: the message is the child's traceback."""


class ChildDied(RuntimeError):
    """The child ended (killed, out of memory, os._exit) before it answered."""


def call(fn: Callable[..., Any], *args: Any, name: str) -> Any:
    """fn(*args) in a child process named `name`; its result, or ChildFailed / ChildDied. The child is a daemon:
    a parent that exits normally ends it; one killed (-9, or a signal it does not handle) leaves it to finish
    what it does, then to say in a log line that nobody took its answer."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    root = logging.getLogger()
    formats = [h.formatter._fmt for h in root.handlers if h.formatter is not None]
    logs = (root.level, formats[0] if formats else None)
    child = context.Process(target=_run, args=(send, logs, fn, args), name=name, daemon=True)
    child.start()
    send.close()  # the child holds the only writer: recv() sees EOF when it dies
    try:
        kind, value = receive.recv()
    except EOFError:
        child.join()
        raise ChildDied(f"{name} ended with exit code {child.exitcode} before it answered") from None
    finally:
        receive.close()
    child.join()
    if kind == "failed":
        raise ChildFailed(value)
    return value


def _run(send: Connection, logs: tuple[int, str | None], fn: Callable[..., Any], args: tuple) -> None:
    level, fmt = logs
    if fmt is not None:
        logging.basicConfig(level=level, stream=sys.stderr, format=fmt)
    try:
        answer = ("ok", fn(*args))
    except Exception:
        answer = ("failed", traceback.format_exc())
    try:
        send.send(answer)
    except OSError:  # BrokenPipeError: the parent was killed (-9) while the pass ran; the pass itself is done
        logging.getLogger(__name__).warning("the process that started %s is gone: its answer is dropped",
                                            multiprocessing.current_process().name)  # fmt: skip
    send.close()
