#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then integration tests against the real local stack
# (Kafka, TimescaleDB, Spark) that the tests start themselves. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -x .venv/bin/pytest ] || { echo "no .venv: run ./scripts/setup.sh first" >&2; exit 1; }
exec .venv/bin/pytest "$@"
