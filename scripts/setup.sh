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
  echo "setup: installing ferkit and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  echo "$wanted" > "$stamp"
fi
