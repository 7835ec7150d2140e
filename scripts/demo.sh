#!/usr/bin/env bash
# Quick start, part one: set up .venv, then recognise the expressions in two real photos
# that ship with ferkit (or in the photos, folders or URLs given as arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ferkit demo "$@"
echo
echo "ferkit is installed in ./.venv: 'source .venv/bin/activate' puts the ferkit command on your PATH."
