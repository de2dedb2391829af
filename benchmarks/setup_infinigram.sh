#!/usr/bin/env bash
# The peer of benchmarks/trace_index.py: infini-gram (Rust suffix-array builder + C++ query engine) in
# its own virtualenv, never the product's. Its tokenizer step is never used (the benchmark writes the
# token files itself), so no tokenizer is fetched from a hub. A no-op when the venv already works.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3.11}"
if ! .venv-infinigram/bin/python -c "import infini_gram.engine, numpy" 2>/dev/null; then
  [ -x .venv-infinigram/bin/python ] || "$python" -m venv .venv-infinigram
  .venv-infinigram/bin/pip install -q "infini-gram==2.6.0" numpy
fi
.venv-infinigram/bin/python -c "import infini_gram; print('infini-gram ready:', infini_gram.__file__)"
