#!/usr/bin/env bash
# The house checks, run by .ci/run before the tests: ruff (lint and format) and mypy, as configured in
# pyproject.toml. Fix what ruff can with: .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -x .venv/bin/ruff ] || { echo "no .venv with ruff: run ./scripts/setup.sh first" >&2; exit 1; }
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
