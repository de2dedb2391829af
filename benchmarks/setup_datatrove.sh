#!/usr/bin/env bash
# Build datatrove in its own virtualenv (benchmarks/.venv-datatrove): it wants numpy>=2 and its own
# pins, kept apart from the product's env. The script checks the peer *works* (a MinHash signature
# of one document), not only that it imports: issue #23 found a venv that imported but failed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-datatrove"
python="${PYTHON:-python3.11}"
# Pins, each for a reason:
# - datatrove==0.10.1: the version every figure in RESULTS.md was measured against.
# - orjson: JsonlReader imports it; spacy: its default English word tokenizer (load_word_tokenizer).
# - regex, tokenizers: datatrove/utils/text.py (simplify_text) and its word tokenizers import them,
#   and datatrove declares neither as a core dependency (its pyproject puts them under extras).
# - xxhash<4: MinhashDedupSignature hashes with xxhash.xxh64_intdigest(str); xxhash 4.x accepts only
#   bytes-like input (its changelog: "drop str support"), so every signature raises TypeError.
# - warcio, faust-cchardet, python-magic, trafilatura, lxml_html_clean, pyarrow: WarcReader + its
#   Trafilatura extractor and ParquetReader (benchmarks/import_throughput.py); datatrove lists them as extras.
reqs=("datatrove==0.10.1" orjson spacy regex tokenizers "xxhash<4"
      warcio faust-cchardet python-magic trafilatura lxml_html_clean pyarrow)
check() {
"$venv/bin/python" - <<'PY'
import datatrove
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

# The calls MinhashDedupSignature.run makes per document: word tokenizer (spacy), shingles (xxhash), signature.
sig = MinhashDedupSignature(output_folder="/tmp/glasslm-datatrove-check", config=MinhashConfig())
shingles = sig.get_shingles("the quick brown fox jumps over the lazy dog " * 4)
assert len(shingles) and sig.get_signature(shingles), "datatrove produced no MinHash signature"
print("datatrove ready:", datatrove.__file__)
PY
}
if ! check 2>/dev/null; then  # a no-op when the venv already works
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
  fi
  "$venv/bin/pip" install --quiet "${reqs[@]}"
  check
fi
