#!/usr/bin/env bash
# Quick start, part two (and CI): set up .venv, lint, check formatting, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
FERKIT_EXTRAS=dev,torch bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest --durations=10 "$@"
