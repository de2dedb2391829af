#!/usr/bin/env bash
# Rerun every peer comparison in benchmarks/ with modest, fixed settings, then rewrite the README's
# benchmark table (between <!-- benchmarks:begin/end --> only) and append the run to RESULTS.md, so
# the README never carries a figure the current code has not produced (issue #23).
#
#   bash benchmarks/run_all.sh                 # ~30-40 min on the 2-core box; not part of the tests
#   ONLY="tag dedupe_mix" bash benchmarks/run_all.sh   # a subset (the table then lists only those)
#
# Each benchmark interleaves the two sides (ABAB) and prints one BENCH-RESULT line per figure;
# OUT/<name>.{cmd,log,load,rc} keep its command, output, `uptime` before/after and exit status.
# A benchmark that fails is listed as failed in the table; the run goes on with the next one.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
out="${OUT:-runs/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
# Peers from their own setup scripts (each is a no-op when its venv already works).
for peer in dolma datatrove lmeval infinigram; do
  bash "benchmarks/setup_$peer.sh" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
    || echo "setup_$peer.sh failed: its benchmark will fail too" >&2
done
# date, load, and the code measured (commit, "+dirty" when the work tree differs from it)
{ date -u +"%Y-%m-%d %H:%M UTC"; uptime
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benchmarks || echo +dirty)"; } > "$out/started"

run() {  # run NAME CMD...: one benchmark, its output kept and shown
  local name=$1; shift
  case " ${ONLY:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name: $*"
  echo "$*" > "$out/$name.cmd"
  uptime > "$out/$name.load"
  "$@" > "$out/$name.log" 2>&1
  echo $? > "$out/$name.rc"
  uptime >> "$out/$name.load"
  grep "^BENCH-RESULT" "$out/$name.log" || { echo "  failed (exit $(cat "$out/$name.rc")):"; tail -5 "$out/$name.log"; }
}

run tag $py benchmarks/tag_throughput.py --workers 2 --mb-per-source 2 --repeat 2
run dedupe_mix $py benchmarks/dedupe_mix_throughput.py --mb 150 --workers 2 --repeat 3
# datatrove's LocalPipelineExecutor hung with 2 workers here (RESULTS.md): one process each.
run minhash $py benchmarks/minhash_throughput.py --mb 20 --workers 1 --repeat 2
run tokenize $py benchmarks/tokenize_throughput.py --mb 20 --workers 2 --repeats 3 --train-mb 2 --vocab 8192
run eval_vs_lmeval $py benchmarks/eval_vs_lmeval.py --limit 50 --shots 5 --repeats 2 --threads 1
run trace_index $py benchmarks/trace_index.py --tokens 5000000 --repeat 2
# CPU clock, one thread: what a step costs a core; wall time on this shared box swung up to 10x.
# A fresh Inductor cache (as for generate below), so both sides' compile times are cold.
run train_cpu env TORCHINDUCTOR_CACHE_DIR="$out/inductor-train" $py benchmarks/train_cpu.py --threads 1 --clock cpu \
  --repeats 5 --steps 2 --peer-compile
# A fresh Inductor cache, so both sides' compile times are cold.
run generate env TORCHINDUCTOR_CACHE_DIR="$out/inductor" $py benchmarks/generate_throughput.py \
  --threads 1 --new-tokens 64 --repeats 3 --batches 1 8 --label 42M
# The tiny preset's shape, where per-step overhead (what a compiled step removes) dominates.
run generate_tiny env TORCHINDUCTOR_CACHE_DIR="$out/inductor-tiny" $py benchmarks/generate_throughput.py \
  --threads 1 --new-tokens 64 --repeats 3 --batches 1 8 --d-model 128 --layers 4 --heads 4 --kv-heads 2 \
  --mlp 384 --vocab 4096 --label tiny-shape

{ date -u +"%Y-%m-%d %H:%M UTC"; uptime; } > "$out/ended"
rm -rf "$out/inductor" "$out/inductor-tiny" "$out/inductor-train"
$py benchmarks/readme_table.py "$out"
