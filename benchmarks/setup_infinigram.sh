#!/usr/bin/env bash
# The peer of benchmarks/trace_index.py: infini-gram (Rust suffix-array builder + C++ query engine) in
# its own virtualenv, never the product's. Its tokenizer step is never used (the benchmark writes the
# token files itself), so no tokenizer is fetched from a hub.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv-infinigram
.venv-infinigram/bin/pip install -q "infini-gram==2.6.0" numpy
