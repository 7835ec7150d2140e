#!/usr/bin/env bash
# Create ./.venv and install ferkit into it (editable, with the extras in FERKIT_EXTRAS,
# default "dev"; scripts/test.sh adds "torch" for the torch engine's tests).
# Safe to run again: it reinstalls only when pyproject.toml, requirements.txt or the extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.ferkit-setup
extras=${FERKIT_EXTRAS:-dev}
wanted=$( (cat pyproject.toml requirements.txt; echo "$extras") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "setup: installing ferkit and its dependencies into .venv (extras: $extras)."
  echo "setup: the first time this downloads about 100 packages (TensorFlow, ONNX Runtime,"
  echo "setup: OpenCV, ...; 1-2 GB, a few minutes); each is named as it is fetched."
  .venv/bin/python -m pip install --quiet --upgrade pip
  # pip's own lines, less its noise: one line per package fetched, then the install step.
  .venv/bin/python -m pip install --progress-bar off -e ".[$extras]" 2>&1 \
    | { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed|ERROR)' || true; } \
    | sed -u -e 's/^Successfully installed .*/Successfully installed the packages./' -e 's/^/setup:   /'
  echo "$wanted" > "$stamp"
  echo "setup: done."
fi
