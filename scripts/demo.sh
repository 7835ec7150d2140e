#!/usr/bin/env bash
# Quick start, part one: set up .venv, then run ferkit's main job on generated inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ferkit demo "$@"
