"""Runs one cryptomon command under tracemalloc and dumps a snapshot of the Python heap every EVERY seconds
into FOLDER (`<seconds>.snap`), for bench/ingest_heap.py:

    python bench/heap_wrapper.py FOLDER EVERY ingest
"""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc
from pathlib import Path


def dump_every(folder: Path, every: float) -> None:
    t0 = time.monotonic()
    n = 1
    while True:
        time.sleep(max(0.0, t0 + n * every - time.monotonic()))
        tracemalloc.take_snapshot().dump(str(folder / f"{round(n * every)}.snap"))
        n += 1


def main() -> None:
    folder, every, *args = sys.argv[1:]
    tracemalloc.start(1)  # one frame: where each block was allocated, grouped by line
    threading.Thread(target=dump_every, args=(Path(folder), float(every)), daemon=True).start()
    from cryptomon.cli import main as cli

    sys.argv = ["cryptomon", *args]
    cli()


if __name__ == "__main__":
    main()
