#!/usr/bin/env bash
# Install lm-evaluation-harness 0.4.13 (with its Hugging Face backend) in its own virtualenv
# (benchmarks/.venv-lmeval), the peer of benchmarks/eval_vs_lmeval.py and tests/test_eval_lmeval.py.
# torch first, pinned to the small CPU build 2.13.0: lm-eval's dependencies would otherwise pull the
# default (CUDA, several GB) build. The script fails if pip replaced it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-lmeval"
python="${PYTHON:-python3.11}"
torch_spec="${GLASSLM_TORCH:-torch==2.13.0}"
if ! "$venv/bin/python" -c "import lm_eval, transformers" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet "$torch_spec"
  "$venv/bin/pip" install --quiet "$torch_spec" "lm-eval[hf]==0.4.13" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
fi
"$venv/bin/python" - "$torch_spec" <<'PY'
import sys
from importlib.metadata import version

import torch

want = sys.argv[1].partition("==")[2]
if want and not torch.__version__.startswith(want):
    sys.exit(f"pip replaced torch: {torch.__version__}, wanted {want}")
print(f"lm-eval {version('lm_eval')} ready (torch {torch.__version__}): {sys.executable}")
PY
