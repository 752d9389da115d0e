"""The chaos suite kills and restarts Kafka and TimescaleDB, so it runs on a stack of its own (ports
19192/19193 and 15533 unless CRYPTOMON_CHAOS_KAFKA_PORT / CRYPTOMON_CHAOS_PG_PORT say otherwise),
started once for the module and stopped at the end; the session stack of the integration tests is
never touched."""

from __future__ import annotations

import os

import pytest

from cryptomon.settings import Settings


@pytest.fixture(scope="module")
def chaos_stack() -> Settings:
    from cryptomon.services.local import throwaway_stack

    kafka_port = int(os.environ.get("CRYPTOMON_CHAOS_KAFKA_PORT", "19192"))
    pg_port = int(os.environ.get("CRYPTOMON_CHAOS_PG_PORT", "15533"))
    with throwaway_stack(kafka_port, pg_port, prefix="cryptomon-chaos-") as settings:
        yield settings


@pytest.fixture()
def small_disk_stack() -> Settings:
    """A stack whose state folder is a 384 MB tmpfs of its own, so that a test can fill that disk without
    touching the machine's (ports 19292/19293 and 15633). Needs root to mount; skipped otherwise."""
    import shutil
    import subprocess

    from cryptomon.services.local import stack_down, stack_up, throwaway_settings, throwaway_state_dir

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the state folder needs root")
    state = throwaway_state_dir("cryptomon-disk-")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=384m,mode=0755", "cryptomon-disk", str(state)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        shutil.rmtree(state, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    settings = throwaway_settings(
        state,
        int(os.environ.get("CRYPTOMON_DISK_KAFKA_PORT", "19292")),
        int(os.environ.get("CRYPTOMON_DISK_PG_PORT", "15633")),
        disk_min_free_mb=64,
    )
    try:
        stack_up(settings)
        yield settings
    finally:
        stack_down(settings)
        subprocess.run(["umount", str(state)], check=False)
        shutil.rmtree(state, ignore_errors=True)
