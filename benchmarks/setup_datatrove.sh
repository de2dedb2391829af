#!/usr/bin/env bash
# Build datatrove in its own virtualenv (benchmarks/.venv-datatrove): it wants numpy>=2 and its own
# pins, kept apart from the product's env.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-datatrove"
python="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import datatrove" 2>/dev/null; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  # orjson: JsonlReader needs it; xxhash: its hashing; spacy: its English word tokenizer
  "$venv/bin/pip" install --quiet datatrove orjson xxhash spacy
fi
"$venv/bin/python" -c "import datatrove; print('datatrove ready:', datatrove.__file__)"
