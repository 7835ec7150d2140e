#!/usr/bin/env bash
# Quick start, part two (and CI): set up .venv with every extra, and .venv-core with the
# core install only (a test predicts with it, without TensorFlow); lint, check
# formatting, run every test. The browser tests of ferkit serve drive Debian's Chromium
# (/usr/bin/chromium; .ci/run installs it) and are skipped where it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
FERKIT_EXTRAS=dev,all bash scripts/setup.sh
FERKIT_VENV=.venv-core FERKIT_EXTRAS= bash scripts/setup.sh
[ -x /usr/bin/chromium ] || echo "test: /usr/bin/chromium is missing, so the browser tests of ferkit serve are skipped (apt-get install chromium)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest --durations=10 "$@"
