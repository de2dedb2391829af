"""Collect what a run directory holds into sections: tables, figures and text.

Each section reads one kind of artifact and says plainly when the run has none of it, so a report can
be made at any point of a run (and of a run made by an older glasslm).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the report is rendered to files, never to a screen
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from glasslm import artifacts  # noqa: E402


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    figures: list[tuple[str, Figure]] = field(default_factory=list)  # (file stem, figure)
    missing: str | None = None  # why the section is empty


@dataclass
class Run:
    path: Path
    name: str

    def find(self, *candidates: str) -> Path | None:
        for rel in candidates:
            p = self.path / rel
            if (p / artifacts.MANIFEST).is_file():
                return p
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run is not worth failing a report for
    return rows


def _fig(width: float = 6.4, height: float = 3.6) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.grid(alpha=0.3)
    return fig, ax


def _curve_section(
    title: str, runs: list[Run], rel: str, keys: list[tuple[str, str]], stem: str, text: str = ""
) -> Section:
    """Line plots of ``metrics.jsonl`` keys against step, one line per run."""
    section = Section(title, text=text)
    found = False
    for key, label in keys:
        fig, ax = _fig()
        plotted = False
        for run in runs:
            rows = [r for r in read_jsonl(run.path / rel / "metrics.jsonl") if key in r and r[key] is not None]
            if rows:
                ax.plot([r.get("step", i) for i, r in enumerate(rows)], [r[key] for r in rows], label=run.name)
                plotted = True
        if plotted:
            found = True
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.set_title(label)
            if len(runs) > 1:
                ax.legend()
            section.figures.append((f"{stem}_{key}", fig))
        else:
            plt.close(fig)
    if not found:
        section.missing = f"no {rel}/metrics.jsonl in this run"
    return section


def training_section(runs: list[Run]) -> Section:
    section = _curve_section(
        "Pretraining",
        runs,
        "train",
        [("loss", "training loss (nats/token)"), ("lr", "learning rate"), ("tokens_per_s", "throughput (tokens/s)")],
        "train",
    )
    main = runs[0]
    rows = read_jsonl(main.path / "train" / "metrics.jsonl")
    if rows:
        last = rows[-1]
        summary = {k: last.get(k) for k in ("step", "tokens", "loss", "lr", "tokens_per_s", "mfu") if k in last}
        skipped = sum(1 for r in rows if r.get("skipped"))
        summary["skipped_steps"] = skipped
        section.tables.append(("Last logged step", [summary]))
        unigram = _unigram_baseline(main)
        if unigram is not None:
            section.text = (
                f"Unigram baseline (entropy of the training token distribution): {unigram:.3f} nats/token. "
                f"Final training loss: {last.get('loss', float('nan')):.3f}."
            )
    return section


def _unigram_baseline(run: Run) -> float | None:
    """Entropy of the unigram distribution of the training tokens: a model that learned nothing
    beyond token frequencies cannot beat it."""
    import numpy as np

    tokens = run.find("tokens")
    if tokens is None:
        return None
    parts = sorted((tokens / "train").glob("part-*.npy"))
    if not parts:
        return None
    counts: Any = None
    for part in parts:
        arr = np.load(part, mmap_mode="r")
        c = np.bincount(np.asarray(arr, dtype=np.int64))
        counts = c if counts is None else np.pad(counts, (0, max(0, len(c) - len(counts)))) + np.pad(
            c, (0, max(0, len(counts) - len(c)))
        )
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def lineage_section(runs: list[Run]) -> Section:
    section = Section("Lineage")
    run = runs[0]
    final = None
    for rel in ("hf", "adapt/rl", "adapt/dpo", "adapt/sft", "train"):
        if (run.path / rel / artifacts.MANIFEST).is_file():
            final = run.path / rel
            break
    if final is None:
        section.missing = "no model artifact in this run"
        return section
    tree = artifacts.lineage(final)
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

    walk(tree, 0)
    section.text = f"The final model ({final}) and every artifact it was made from, with manifest hashes."
    section.tables.append(("Lineage of the final model", rows))
    return section


SECTION_BUILDERS: list[Callable[[list[Run]], Section]] = [training_section, lineage_section]
