"""`cryptomon retention` stopped by SIGTERM (as `cryptomon up`, systemd or a container stop it) or by Ctrl-C
(SIGINT to its terminal's process group) while a pass runs in its child: the pass ends, its answer is taken,
the loop exits 0, and no child goes on after it. The pass here is one that waits on a database that accepts
the connection and never answers (libpq's connect_timeout), so it is surely in flight when the signal comes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _passes(pid: int) -> list[int]:
    """The children of `pid` that run a pass (multiprocessing's resource tracker, also its child, is not one)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                    out.append(int(entry))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


@pytest.mark.parametrize("how", ["sigterm_to_the_loop", "ctrl_c_to_the_group"])
def test_a_stop_during_a_pass_waits_for_it_and_leaves_no_child(tmp_path, how):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nothing ever answers the startup packet
    port = silent.getsockname()[1]
    env = {
        **os.environ,
        "CRYPTOMON_PG_DSN": f"postgresql://cryptomon:x@127.0.0.1:{port}/cryptomon?connect_timeout=4",
        "CRYPTOMON_RETENTION_HEALTH_PORT": "0",
        "CRYPTOMON_RETENTION_INTERVAL_SECONDS": "3600",
        "CRYPTOMON_ARCHIVE_DIR": str(tmp_path / "archive"),
        "CRYPTOMON_LOG_LEVEL": "INFO",
    }
    loop = subprocess.Popen([sys.executable, "-m", "cryptomon.cli", "retention"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (children := _passes(loop.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children, "no pass was started"
        silent.settimeout(30)
        peer, _ = silent.accept()  # the pass is connecting: past its start, in the pass (the signals ignored)
        started = time.monotonic()
        if how == "sigterm_to_the_loop":
            loop.send_signal(signal.SIGTERM)
        else:
            os.killpg(loop.pid, signal.SIGINT)
        _, err = loop.communicate(timeout=30)
        took = time.monotonic() - started
        peer.close()
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)
            loop.wait()
        silent.close()
    log = err.decode()
    assert loop.returncode == 0, log
    assert all(not Path(f"/proc/{c}").exists() for c in children), "a pass's child outlived the loop"
    assert "database unavailable" in log  # the pass ran to its end and the loop took its answer
    assert "retention stopped" in log
    assert "Traceback" not in log, log
    assert took < 25
