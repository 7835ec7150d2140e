#!/usr/bin/env bash
# Quick start, part two (and CI): set up .venv with every extra, and .venv-core with the
# core install only (a test predicts with it, without TensorFlow); lint, check
# formatting, run every test on up to four cores at once (pytest-xdist, a test module per
# worker at a time; FERKIT_TEST_WORKERS=1 runs them in one process). The browser tests of
# ferkit serve drive Debian's Chromium (/usr/bin/chromium; .ci/run installs it) and are
# skipped where it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
FERKIT_EXTRAS=dev,all bash scripts/setup.sh
FERKIT_VENV=.venv-core FERKIT_EXTRAS= bash scripts/setup.sh
[ -x /usr/bin/chromium ] || echo "test: /usr/bin/chromium is missing, so the browser tests of ferkit serve are skipped (apt-get install chromium)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
workers=${FERKIT_TEST_WORKERS:-$(nproc)}
if [ "$workers" -gt 4 ]; then
  workers=4
fi
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
else
  parallel=(-p no:xdist)
fi
.venv/bin/python -m pytest "${parallel[@]}" --durations=10 "$@"
