"""README.md, the model card: a Hugging Face metadata header, then every section written from the run's
artifacts. The evaluation, adaptation and energy tables are the report's own sections (report/), rendered
as Markdown without their figures, so the card and the report never disagree."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glasslm import artifacts
from glasslm.release.facts import DataFacts
from glasslm.report.render import markdown_table, markdown_text

# Required front-matter keys and section headings: `release verify` checks each is present and filled.
CARD_FIELDS = ["license", "language", "datasets", "tags", "library_name", "pipeline_tag"]
CARD_SECTIONS = [
    "Model",
    "Revisions",
    "Data",
    "Training",
    "Evaluation",
    "Adaptation",
    "Energy",
    "Limitations",
    "Licence check",
    "How to reproduce",
    "Lineage",
    "Files",
]


@dataclass
class Revision:
    name: str  # the branch: stage1-step400-tokens2M, sft-step150, …
    stage: str  # train, sft, dpo, rl
    step: int
    tokens: int | None
    source: str  # the checkpoint, relative to the run
    created: str | None
    commit: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CardInputs:
    run: Path
    name: str
    repo_id: str
    license: str
    language: list[str]
    facts: DataFacts
    license_check: dict[str, Any]
    revisions: list[Revision]
    final: Revision
    hf_config: dict[str, Any]
    lineage: list[dict[str, Any]]  # {artifact, kind, manifest_sha256, command}


def _front_matter(c: CardInputs) -> str:
    meta: dict[str, Any] = {
        "license": c.license,
        "language": c.language,
        "datasets": [
            f"{c.name}-corpus ({src})" for src in c.facts.summary["funnel"] if not src.startswith("(")
        ],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": [
            "glasslm",
            c.hf_config.get("model_type", "olmo2"),
            "open-data",
            "reproducible",
            *(["chat"] if c.final.stage != "train" else []),
        ],
    }
    if c.final.stage != "train":
        meta["base_model"] = c.repo_id  # the pretrained model is a revision of this same repository
        meta["base_model_relation"] = "finetune"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _report_sections(run: Path, builders: list[Callable[[list[Any]], Any]]) -> list[str]:
    """The report's sections as Markdown (text and tables; figures are dropped unrendered)."""
    from glasslm.report.base import Run

    lines: list[str] = []
    for build in builders:
        section = build([Run(run, run.name)])
        if section.missing and not section.tables:
            lines += [f"*Not in this run: {section.missing}*", ""]
            continue
        if section.text:
            lines += [markdown_text(section.text), ""]
        for caption, rows in section.tables:
            if rows:
                lines += markdown_table(caption, rows)
    return lines


def _model(c: CardInputs, params: int | None) -> list[str]:
    h = c.hf_config
    rows = [
        {"field": k, "value": h.get(k)}
        for k in (
            "architectures",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
            "rope_theta",
            "tie_word_embeddings",
            "torch_dtype",
        )
    ]
    rows.insert(0, {"field": "parameters", "value": params})
    return [
        f"An {h.get('architectures', ['?'])[0]} model with {params or 0:,} parameters, trained from scratch "
        f"by glasslm; the main branch holds the final {'adapted (' + c.final.stage + ')' if c.final.stage != 'train' else 'pretrained'} "
        f"model, from `{c.final.source}`.",
        "",
        *markdown_table("Architecture (config.json)", rows),
    ]


def _revisions(c: CardInputs) -> list[str]:
    rows = [
        {
            "revision": r.name,
            "stage": r.stage,
            "step": r.step,
            "tokens": r.tokens,
            "checkpoint": r.source,
            "commit": r.commit[:12],
        }
        for r in c.revisions
    ]
    return [
        "Every kept checkpoint of pretraining and of each adaptation stage is a branch, named like OLMo's "
        "revisions.",
        "",
        *markdown_table("Revisions (git branches)", rows),
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{c.repo_id}", revision="{c.revisions[0].name if c.revisions else "main"}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{c.repo_id}")',
        "```",
        "",
        "From a local copy of this folder, `from_pretrained(folder, revision=…)` ignores the revision: check the "
        "branch out first (`git worktree add ../rev BRANCH`) and load that folder.",
        "",
    ]


def _data(c: CardInputs) -> list[str]:
    from glasslm.data import ledger

    s = c.facts.summary
    d = s["decisions"]
    decon = c.facts.decon
    lines = [
        f"{s['input']['docs']:,} input documents ({s['input']['bytes']:,} bytes) from "
        f"{', '.join(src for src in s['funnel'])}; kept {d['kept']:,}, modified {d['modified']:,}, removed "
        f"{d['removed']:,}, quarantined {d['quarantined']:,}; {s['output_docs']:,} documents "
        f"({s['output_bytes']:,} bytes) written. Decontamination: "
        + (
            f"{decon.get('contaminated_documents', 0):,} of {decon.get('documents', 0):,} documents overlapped "
            f"an evaluation set ({', '.join(decon.get('tasks') or {}) or 'none named'})."
            if decon
            else "no decontamination artifact in the run."
        )
        + " Sources, licences, every rule and the held-out split: [DATASHEET.md](DATASHEET.md).",
        "",
    ]
    return lines + markdown_table("Curation funnel (mix ledger)", ledger.stats_rows(s))


def _training(c: CardInputs, train: dict[str, Any]) -> list[str]:
    m = train.get("metrics") or {}
    conf = train.get("config") or {}
    sched, optim = conf.get("schedule") or {}, conf.get("optim") or {}
    loader = (conf.get("data") or {}).get("loader") or {}
    rows = [
        {"field": k, "value": v}
        for k, v in [
            ("tokens", m.get("tokens")),
            ("steps", m.get("steps")),
            ("final loss", m.get("final_loss")),
            ("sequence length", loader.get("seq_len")),
            ("global batch (sequences)", loader.get("global_batch_size")),
            (
                "optimizer",
                f"AdamW lr {optim.get('lr')}, betas {optim.get('betas')}, weight decay {optim.get('weight_decay')}",
            ),
            (
                "schedule",
                f"{sched.get('kind')}, warmup {sched.get('warmup')} {sched.get('unit', 'steps')}, "
                f"final lr ratio {sched.get('final_lr_ratio')}",
            ),
            ("hardware", f"{m.get('device')} × {m.get('world_size', 1)}"),
            ("wall time (s)", m.get("wall_s")),
            ("skipped steps", m.get("skipped_steps")),
        ]
    ]
    return [
        "Pretraining (`train`); the adaptation stages are under *Adaptation*, energy under *Energy*.",
        "",
        *markdown_table("Pretraining (train manifest)", rows),
    ]


def _limitations(c: CardInputs, train: dict[str, Any], results: dict[str, Any] | None) -> list[str]:
    m = train.get("metrics") or {}
    params, tokens = m.get("params"), m.get("tokens")
    out = []
    if params and tokens:
        # Hoffmann et al. (2022): compute-optimal training uses ~20 tokens per parameter.
        out.append(
            f"Trained on {tokens:,} tokens for {params:,} parameters ({tokens / params:.2g} tokens per "
            f"parameter; Chinchilla-optimal is ~20): expect little beyond local statistics of the text."
        )
    at_chance = [
        t["task"]
        for t in (results or {}).get("tasks", [])
        if not t.get("group")
        and t.get("chance") is not None
        and t.get("acc") is not None
        and abs(t["acc"] - t["chance"]) <= 2 * (t.get("acc_stderr") or 0)
    ]
    if at_chance:
        out.append(f"At chance (within two standard errors) on {', '.join(at_chance)}.")
    out.append(
        f"Language: {', '.join(c.language)} only, as the corpus is; sources are "
        f"{', '.join(s for s in c.facts.summary['funnel'])}."
    )
    if c.facts.unlicensed:
        out.append(
            f"{len(c.facts.unlicensed):,} corpus documents carry no licence (see DATASHEET.md, *Licences*)."
        )
    out.append("Not evaluated for safety; moderation was limited to the recipe's toxicity threshold.")
    return [*[f"- {line}" for line in out], ""]


def _license(c: CardInputs) -> list[str]:
    lc = c.license_check
    if lc["ok"]:
        return [
            f"Every source the model was trained on has a licence that allows release under `{c.license}`.",
            "",
        ]
    head = (
        "**Overridden** with `--allow-license-issues` (recorded in `glasslm/manifest.json`):"
        if lc["overridden"]
        else "Failed:"
    )
    return [
        head,
        "",
        *[
            f"- {p['source']}: {p['docs']:,} trained-on documents ({p['bytes']:,} bytes), licence "
            f"{p['license']}: {p['why']}"
            for p in lc["problems"]
        ],
        "",
    ]


def _reproduce(c: CardInputs) -> list[str]:
    lines = [
        "With the same glasslm version (the manifests record it), from the shipped run config:",
        "",
        "```bash",
        f"glasslm pipeline --config glasslm/pipeline-config.yaml --out runs/{c.name}",
        f"glasslm release runs/{c.name} --out {c.name}-release",
        "```",
        "",
        "Or artifact by artifact: each command as recorded in its manifest (`glasslm reproduce ARTIFACT` re-runs "
        "one and compares):",
        "",
        "```bash",
    ]
    lines += [" ".join(node["command"] or []) for node in c.lineage if node.get("command")]
    return [*lines, "```", ""]


def _lineage(c: CardInputs) -> list[str]:
    rows = [
        {"artifact": n["artifact"], "kind": n["kind"], "manifest sha256": n["manifest_sha256"]}
        for n in c.lineage
    ]
    return [
        "Every artifact of the run with the sha256 of its manifest. The manifests ship in `glasslm/manifests/` "
        "byte for byte, without the files they describe: `glasslm release verify` checks them against these "
        "hashes, and `glasslm manifest verify --recursive` checks a run's files against them (in the run).",
        "",
        *markdown_table("Lineage", rows),
    ]


def _files(shipped: list[str]) -> list[str]:
    return [
        "Beside the model: `DATASHEET.md`, and under `glasslm/` the release manifest, the run's manifests, "
        "logs and report:",
        "",
        *[f"- `{p}`" for p in shipped],
        "",
    ]


def write_card(c: CardInputs, shipped: list[str]) -> str:
    from glasslm.report.model_sections import adaptation_section, energy_section, evaluation_section

    train = (
        artifacts.read_manifest(c.run / "train") if (c.run / "train" / artifacts.MANIFEST).is_file() else {}
    )
    results_path = c.run / "eval" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    params = (train.get("metrics") or {}).get("params")
    body: dict[str, list[str]] = {
        "Model": _model(c, params),
        "Revisions": _revisions(c),
        "Data": _data(c),
        "Training": _training(c, train),
        "Evaluation": [
            "Chance is shown beside every accuracy; a tiny model sits at chance on downstream tasks, "
            "so bits per byte (held-out and of the gold answer) are the figures that move.",
            "",
            *_report_sections(c.run, [evaluation_section]),
        ],
        "Adaptation": _report_sections(c.run, [adaptation_section]),
        "Energy": _report_sections(c.run, [energy_section]),
        "Limitations": _limitations(c, train, results),
        "Licence check": _license(c),
        "How to reproduce": _reproduce(c),
        "Lineage": _lineage(c),
        "Files": _files(shipped),
    }
    assert list(body) == CARD_SECTIONS
    lines = [
        _front_matter(c),
        f"# {c.name}",
        "",
        f"Released by `glasslm release` from the run `{c.run.name}`: the model, its revisions, a datasheet of "
        "its data, its logs and the manifest of every artifact it was made from.",
        "",
    ]
    for title, section in body.items():
        lines += [f"## {title}", "", *section]
    return "\n".join(lines)


def rounded_tokens(tokens: int) -> str:
    """OLMo's revision token counts: rounded up to a whole unit (tokens4B)."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if tokens >= size:
            return f"{math.ceil(tokens / size)}{unit}"
    return str(tokens)
