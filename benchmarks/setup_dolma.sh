#!/usr/bin/env bash
# Build dolma 1.2.1 in its own virtualenv (benchmarks/.venv-dolma), away from the product's env:
# dolma pins tokenizers<=0.19.1 and numpy<2, which conflict with glasslm's dependencies.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-dolma"
python="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/dolma" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "dolma==1.2.1"
fi
"$venv/bin/dolma" --help >/dev/null && echo "dolma ready: $venv/bin/dolma"
