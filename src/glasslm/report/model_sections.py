"""Sections about the model: pretraining, evaluation, adaptation, energy and lineage."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from glasslm import artifacts
from glasslm.report import chat_table
from glasslm.report.base import Run, Section, curve_figures, new_fig, read_json, read_jsonl, with_run

ADAPT_STAGES = ("sft", "dpo", "rl")
# Curves worth plotting for an adaptation run, when its metrics.jsonl logs them.
ADAPT_KEYS = [
    ("loss", "loss"),
    ("reward_accuracy", "reward accuracy (chosen > rejected)"),
    ("reward_margin", "reward margin"),
    ("reward", "mean reward"),
    ("kl", "KL to the reference"),
]


# --- pretraining ------------------------------------------------------------------------------------


def unigram_baseline(run: Run) -> float | None:
    """Entropy (nats/token) of the unigram distribution of the training tokens: a model that learned
    nothing beyond token frequencies cannot beat it."""
    tokens = run.find("tokens")
    if tokens is None:
        return None
    counts = np.zeros(0, dtype=np.int64)
    for part in sorted((tokens / "train").glob("part-*.npy")):
        c = np.bincount(np.asarray(np.load(part, mmap_mode="r"), dtype=np.int64))
        if len(c) > len(counts):
            c[: len(counts)] += counts
            counts = c
        else:
            counts[: len(c)] += c
    if not counts.sum():
        return None
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def training_section(runs: list[Run]) -> Section:
    section = Section("Pretraining")
    unigram = {r.name: u for r in runs if (u := unigram_baseline(r)) is not None}
    label = "unigram baseline" + (" ({})" if len(runs) > 1 else "")
    baselines = {"loss": [(name, label.format(name), u) for name, u in unigram.items()]}
    keys = [
        ("loss", "training loss (nats/token)"),
        ("lr", "learning rate"),
        ("tokens_per_s", "throughput (tokens/s)"),
    ]
    if not curve_figures(section, runs, "train", keys, "train", baselines):
        section.missing = "no train/metrics.jsonl in this run"
        return section
    summary: list[dict[str, Any]] = []
    for run in runs:
        rows = read_jsonl(run.path / "train" / "metrics.jsonl")
        if not rows:
            continue
        last = rows[-1]
        speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
        # The first steps include compilation and warm-up, so the median is the honest throughput.
        row: dict[str, Any] = {k: last.get(k) for k in ("step", "tokens", "loss", "lr") if k in last}
        row["median tokens/s"] = float(np.median(speeds)) if speeds else None
        row["wall_s"] = last.get("wall_s")
        row["mfu"] = last.get("mfu")
        # skipped_total counts every skipped step; rows are logged every log_every steps and would miss some
        row["skipped_steps"] = last.get("skipped_total", sum(1 for r in rows if r.get("skipped")))
        row["unigram baseline"] = unigram.get(run.name)
        summary += with_run(run, [row], runs)
    section.tables.append(("Last logged step (loss and baseline in nats/token)", summary))
    main = summary[0] if summary else {}
    if main.get("unigram baseline") is not None and main.get("loss") is not None:
        gap = main["unigram baseline"] - main["loss"]
        section.text = (
            f"Final training loss {main['loss']:.3f} nats/token against a unigram baseline of "
            f"{main['unigram baseline']:.3f} (the entropy of the training tokens' frequencies): "
            + (f"{gap:.3f} below it." if gap > 0 else "not below it yet.")
        )
    return section


# --- evaluation -------------------------------------------------------------------------------------


def evaluation_section(runs: list[Run]) -> Section:
    section = Section("Evaluation")
    results = {r.name: read_json(r.path / "eval" / "results.json") for r in runs}
    perplexity = {
        r.name: read_json(r.path / "eval" / "perplexity.json") or (results[r.name] or {}).get("perplexity")
        for r in runs
    }
    if not any(results.values()) and not any(perplexity.values()):
        section.missing = "no eval/results.json or eval/perplexity.json in this run"
        return section
    main = results.get(runs[0].name) or {}
    if main.get("model"):
        section.text = f"Model evaluated: <code>{_esc(main['model'])}</code>."
    _perplexity_tables(section, runs, perplexity)
    _downstream_tables(section, runs, results)
    return section


def _esc(value: Any) -> str:
    import html

    return html.escape(str(value))


def _perplexity_tables(section: Section, runs: list[Run], perplexity: dict[str, Any]) -> None:
    rows: list[dict[str, Any]] = []
    bpb: dict[str, dict[str, float]] = {}  # run -> domain -> bits per byte
    for run in runs:
        p = perplexity.get(run.name)
        if not p:
            continue
        per_run = []
        for d in p.get("domains", []):
            per_run.append(
                {k: d.get(k) for k in ("domain", "docs", "tokens", "bytes", "loss", "bits_per_byte")}
            )
            bpb.setdefault(run.name, {})[d["domain"]] = d["bits_per_byte"]
        if p.get("macro"):
            per_run.append(
                {
                    "domain": "macro average",
                    "loss": p["macro"].get("loss"),
                    "bits_per_byte": p["macro"].get("bits_per_byte"),
                }
            )
            bpb.setdefault(run.name, {})["macro"] = p["macro"]["bits_per_byte"]
        rows += with_run(run, per_run, runs)
    if not rows:
        return
    section.tables.append(("Held-out bits per byte per domain (lower is better)", rows))
    domains = list(dict.fromkeys(d for per in bpb.values() for d in per))
    fig, ax = new_fig()
    width = 0.8 / len(bpb)
    for i, (name, per) in enumerate(bpb.items()):
        xs = [j + i * width for j in range(len(domains))]
        ax.bar(xs, [per.get(d, np.nan) for d in domains], width=width, label=name)
    ax.set_xticks([j + width * (len(bpb) - 1) / 2 for j in range(len(domains))], domains)
    ax.set_ylabel("bits per byte")
    ax.set_title("held-out bits per byte per domain")
    if len(bpb) > 1:
        ax.legend(fontsize="small")
    section.figures.append(("eval_bits_per_byte", fig))


def _downstream_tables(section: Section, runs: list[Run], results: dict[str, Any]) -> None:
    # Subtasks of a group (the 57 MMLU subjects) are summarised by their group's own row.
    per_run = {
        name: [t for t in (r or {}).get("tasks", []) if not t.get("group")] for name, r in results.items()
    }
    per_run = {k: v for k, v in per_run.items() if v}
    if not per_run:
        return
    tasks = list(dict.fromkeys(t["task"] for ts in per_run.values() for t in ts))
    by = {name: {t["task"]: t for t in ts} for name, ts in per_run.items()}
    rows: list[dict[str, Any]] = []
    for task in tasks:
        first = next(by[n][task] for n in by if task in by[n])
        row: dict[str, Any] = {
            "task": task,
            "metric": first.get("metric"),
            "n": first.get("n"),
            "chance": first.get("chance"),
        }
        for name in by:
            t = by[name].get(task, {})
            suffix = f" · {name}" if len(by) > 1 else ""
            row["acc" + suffix] = t.get("acc")
            row["stderr" + suffix] = t.get("acc_stderr")
            row["gold bpb" + suffix] = t.get("gold_bpb")
            # only "OLMES" figures are comparable with published OLMES/OLMo numbers (eval/tasks/standard.py)
            row["setting" + suffix] = (t.get("setting") or {}).get("label") or "not OLMES" if t else None
        rows.append(row)
    section.tables.append(
        (
            "Downstream tasks: accuracy, chance and bits per byte of the gold answer "
            "(setting: OLMES = exactly OLMES's requests, comparable with published numbers)",
            rows,
        )
    )
    for key, label, stem in (
        ("acc", "accuracy", "eval_downstream_acc"),
        ("gold_bpb", "gold-answer bits per byte", "eval_downstream_gold_bpb"),
    ):
        fig, ax = new_fig(7.5, 3.8)
        width = 0.8 / len(by)
        for i, name in enumerate(by):
            xs = [j + i * width for j in range(len(tasks))]
            ax.bar(
                xs, [by[name].get(t, {}).get(key, np.nan) or np.nan for t in tasks], width=width, label=name
            )
        if key == "acc":
            xs = [j + width * (len(by) - 1) / 2 for j in range(len(tasks))]
            chance = [next((by[n][t].get("chance") for n in by if t in by[n]), np.nan) for t in tasks]
            ax.scatter(xs, chance, marker="_", s=300, color="black", label="chance", zorder=3)
        ax.set_xticks(
            [j + width * (len(by) - 1) / 2 for j in range(len(tasks))], tasks, rotation=40, ha="right"
        )
        ax.set_ylabel(label)
        ax.set_title(f"downstream {label}")
        if len(by) > 1 or key == "acc":
            ax.legend(fontsize="small")
        section.figures.append((stem, fig))


# --- adaptation -------------------------------------------------------------------------------------


def adaptation_section(runs: list[Run]) -> Section:
    section = Section("Adaptation")
    stages = [
        s for s in ADAPT_STAGES if any((r.path / "adapt" / s / "metrics.jsonl").is_file() for r in runs)
    ]
    if not stages:
        section.missing = "no adapt/{sft,dpo,rl}/metrics.jsonl in this run"
        return section
    rows: list[dict[str, Any]] = []
    for stage in stages:
        curve_figures(section, runs, f"adapt/{stage}", ADAPT_KEYS, f"adapt_{stage}")
        for run in runs:
            d = run.path / "adapt" / stage
            if not (d / artifacts.MANIFEST).is_file():
                continue
            metrics = artifacts.read_manifest(d).get("metrics") or {}
            for key in metrics:
                if key.endswith("_before") and f"{key[:-7]}_after" in metrics:
                    before, after = metrics[key], metrics[f"{key[:-7]}_after"]
                    change = (
                        after - before
                        if isinstance(before, int | float) and isinstance(after, int | float)
                        else None
                    )
                    rows += with_run(
                        run,
                        [
                            {
                                "stage": stage,
                                "metric": key[:-7],
                                "before": before,
                                "after": after,
                                "change": change,
                            }
                        ],
                        runs,
                    )
    section.text = (
        "Curves of each adaptation stage (SFT, then DPO, then RL when run) and the held-out metrics "
        "each stage measured before and after training."
    )
    chat = [row for run in runs for row in with_run(run, chat_table.chat_rows(run), runs)]
    if chat:
        section.text += (
            " The chat suite: every stage measures the same held-out conversations (never trained on) "
            "and is checked against the stage before it; Δ is the change from the row above."
        )
        regressions = chat_table.regressions_text(runs)
        if regressions:
            section.text += "<br>Chat-suite regressions:<br>" + regressions
        section.tables.append(("Chat suite across the stages", chat))
    section.tables.append(("Held-out metrics before and after each stage", rows))
    return section


# --- energy -----------------------------------------------------------------------------------------


def energy_section(runs: list[Run]) -> Section:
    from glasslm.trace.energy import EnergyConfig, run_energy

    section = Section("Energy")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for run in runs:
        per_run: list[dict[str, Any]] = []
        if (run.path / "pipeline.json").is_file():  # every stage, data stages included
            from glasslm.trace.energy import pipeline_energy

            try:
                whole = pipeline_energy(run.path, EnergyConfig())
            except artifacts.ArtifactError as err:
                rows += with_run(run, [{"stage": "all", "method": f"unavailable: {err}"}], runs)
                continue
            # the stages before the report: it cannot count itself or what runs after it (a release)
            stages = list(itertools.takewhile(lambda s: s["stage"] != "report", whole["stages"]))
            per_run = [
                {
                    "stage": s["stage"],
                    "device": s["device"],
                    "wall_s": s["wall_s"],
                    "method": s["method"],
                    "kWh": s["kwh"],
                    "kg CO2e": s["kg_co2e"],
                }
                for s in stages
            ]
            per_run.append(
                {
                    "stage": "total",
                    "wall_s": sum(s["wall_s"] for s in stages),
                    "kWh": sum(s["kwh"] for s in stages),
                    "kg CO2e": sum(s["kg_co2e"] for s in stages),
                }
            )
            if run is runs[0]:
                notes = [
                    *whole["assumptions"],
                    f"PUE {whole['pue']}, grid {whole['grid_gco2e_per_kwh']} gCO2e/kWh",
                ]
            rows += with_run(run, per_run, runs)
            continue
        for rel in ("train", *(f"adapt/{s}" for s in ADAPT_STAGES)):
            d = run.path / rel
            if not (d / "metrics.jsonl").is_file():
                continue
            try:
                e = run_energy(d, EnergyConfig())
            except artifacts.ArtifactError as err:  # e.g. an unknown GPU: say so, keep the rest
                per_run.append({"stage": rel, "method": f"unavailable: {err}"})
                continue
            per_run.append(
                {
                    "stage": rel,
                    "device": e.device,
                    "wall_s": e.wall_s,
                    "method": e.method,
                    "kWh": e.kwh,
                    "kg CO2e": e.kg_co2e,
                }
            )
            if run is runs[0] and rel == "train":
                notes = [
                    e.method_detail,
                    *e.assumptions,
                    f"PUE {e.pue}, grid {e.grid_gco2e_per_kwh} gCO2e/kWh",
                ]
        measured = [r for r in per_run if "kWh" in r]
        if measured:
            per_run.append(
                {
                    "stage": "total",
                    "wall_s": sum(r["wall_s"] for r in measured),
                    "kWh": sum(r["kWh"] for r in measured),
                    "kg CO2e": sum(r["kg CO2e"] for r in measured),
                }
            )
        rows += with_run(run, per_run, runs)
    if not rows:
        section.missing = "no training metrics (train/metrics.jsonl) to account energy for"
        return section
    section.text = "How the figures were made: " + _esc("; ".join(notes)) + "."
    section.tables.append(
        ("Energy and emissions per stage (data stages included when the run has pipeline.json)", rows)
    )
    return section


# --- lineage ----------------------------------------------------------------------------------------


def lineage_section(runs: list[Run]) -> Section:
    section = Section("Lineage")
    run = runs[0]
    final = next(
        (
            run.path / rel
            for rel in ("hf", "adapt/rl", "adapt/dpo", "adapt/sft", "train")
            if (run.path / rel / artifacts.MANIFEST).is_file()
        ),
        None,
    )
    if final is None:
        section.missing = "no model artifact in this run"
        return section
    rows: list[dict[str, Any]] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        rows.append(
            {
                "artifact": "  " * depth + str(node.get("kind")),
                "path": str(node.get("path")),
                "manifest sha256": (node.get("manifest_sha256") or "")[:16],
                "created": node.get("created"),
                "command": " ".join(node.get("command") or [])[:120],
            }
        )
        for child in node.get("inputs", []):
            walk(child, depth + 1)

    walk(artifacts.lineage(final), 0)
    section.text = f"The final model (<code>{_esc(final)}</code>) and every artifact it was made from, with manifest hashes."
    # The release (glasslm release) runs after the report and ships it: the link is the same whether or not
    # the card exists yet, so the report does not change when the release is made (glasslm reproduce).
    section.text += (
        " Model card: <a href='../release/README.md'>release/README.md</a> (made by <code>glasslm "
        "release RUN</code>, the pipeline's last stage, which ships this report)."
    )
    section.tables.append(("Lineage of the final model", rows))
    return section
