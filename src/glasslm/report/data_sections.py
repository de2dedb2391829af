"""Sections about the data: the mix funnel (from the ledger) and tag distributions (from attributes)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from glasslm import artifacts
from glasslm.data import ledger
from glasslm.data.documents import attributes_path, read_jsonl, shard_names
from glasslm.report.base import Run, Section, new_fig, with_run

LANGID_PREFIX = "tags__langid__"
# Document-level scores plotted per source, when the tags hold them: (attribute, label, log x axis).
QUALITY_KEYS = [
    (
        "tags__gopher__fraction_of_characters_in_duplicate_lines",
        "Gopher: fraction of characters in duplicate lines",
        False,
    ),
    (
        "tags__gopher__fraction_of_words_with_alpha_character",
        "Gopher: fraction of words with a letter",
        False,
    ),
    ("tags__gopher__word_count", "Gopher: words per document", True),
    ("tags__toxicity__doc", "toxicity score", False),
]


# --- funnel -----------------------------------------------------------------------------------------


def funnel_section(runs: list[Run]) -> Section:
    section = Section("Data funnel")
    summaries = {}
    for run in runs:
        mix = run.find("mix")
        if mix is not None and (mix / ledger.LEDGER_FILE).is_file():
            summaries[run.name] = ledger.summary(ledger.read(mix))
    if not summaries:
        section.missing = "no mix/ledger.parquet in this run"
        return section
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.name in summaries:
            rows += with_run(run, ledger.stats_rows(summaries[run.name]), runs)
    main = summaries.get(runs[0].name)
    if main:
        d = main["decisions"]
        section.text = (
            f"{main['input']['docs']:,} input documents ({main['input']['bytes']:,} bytes): "
            f"kept {d['kept']:,}, modified {d['modified']:,}, removed {d['removed']:,}, quarantined "
            f"{d['quarantined']:,}; {main['output_docs']:,} documents ({main['output_bytes']:,} bytes) written, "
            "counting up-sampled copies. '- rule' rows are documents removed by that rule (the first to fire)."
        )
    section.tables.append(
        ("Documents and bytes per source through each rule (from mix/ledger.parquet)", rows)
    )
    for unit, stem in (("docs", "funnel_docs"), ("bytes", "funnel_bytes")):
        section.figures.append((stem, _funnel_plot(summaries, unit)))
    return section


def _funnel_plot(summaries: dict[str, dict[str, Any]], unit: str) -> Any:
    """Per source (and run): input, removed, written — as grouped bars."""
    labels, groups = [], {"input": [], "removed": [], "written": []}  # type: ignore[var-annotated]
    for run_name, s in summaries.items():
        for source, f in s["funnel"].items():
            labels.append(source if len(summaries) == 1 else f"{source}\n{run_name}")
            removed = sum(v[unit] for v in f["by_rule"].values())
            groups["input"].append(f[f"input_{unit}"])
            groups["removed"].append(removed)
            groups["written"].append(f[f"output_{unit}"])
    fig, ax = new_fig(max(6.4, 0.9 * len(labels) + 2), 3.8)
    width = 0.8 / len(groups)
    for i, (name, values) in enumerate(groups.items()):
        ax.bar([j + i * width for j in range(len(labels))], values, width=width, label=name)
    ax.set_xticks([j + width for j in range(len(labels))], labels)
    ax.set_ylabel(unit)
    ax.set_title(f"data funnel per source ({unit}; written counts up-sampled copies)")
    ax.legend(fontsize="small")
    return fig


# --- tag distributions ------------------------------------------------------------------------------


def _doc_value(spans: Any) -> float | None:
    """A document-level attribute is one span covering the document: its score."""
    if isinstance(spans, list) and len(spans) == 1 and len(spans[0]) == 3:
        value = spans[0][2]
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return None


def tag_values(run: Run) -> tuple[dict[str, dict[str, list[float]]], Counter[tuple[str, str]]] | None:
    """(source -> score name -> values, (source, top language) -> documents) from the run's tags,
    joined with the corpus documents of the same shard by id."""
    tags = run.find("attributes/tags")
    if tags is None:
        candidates = sorted(p.parent for p in (run.path / "attributes").glob(f"*/{artifacts.MANIFEST}"))
        tags = next((p for p in candidates if _has_langid(p)), None)
    if tags is None:
        return None
    documents = artifacts.input_of_kind(tags, "documents")
    if documents is None or not documents.is_dir():
        documents = run.path / "corpus"
    values: dict[str, dict[str, list[float]]] = {}
    languages: Counter[tuple[str, str]] = Counter()
    for name, shard in shard_names(documents):
        path = attributes_path(tags, name)
        if not path.is_file():
            continue
        source_of = {d.get("id"): d.get("source") or "(none)" for d in read_jsonl(shard)}
        for record in read_jsonl(path):
            source = source_of.get(record.get("id"), "(unknown)")
            attrs = record.get("attributes") or {}
            per = values.setdefault(source, {})
            langs = {
                k[len(LANGID_PREFIX) :]: v
                for k, spans in attrs.items()
                if k.startswith(LANGID_PREFIX)
                and "paragraph" not in k
                and (v := _doc_value(spans)) is not None
            }
            if langs:
                top = max(langs, key=lambda k: langs[k])
                per.setdefault("langid top-language score", []).append(langs[top])
                languages[(source, top)] += 1
            for key, _, _ in QUALITY_KEYS:
                v = _doc_value(attrs.get(key))
                if v is not None:
                    per.setdefault(key, []).append(v)
    return values, languages


def _has_langid(attributes_dir: Path) -> bool:
    first = next(iter(sorted(attributes_dir.rglob("*.jsonl.gz"))), None)
    if first is None:
        return False
    record: dict[str, Any] = next(read_jsonl(first), {})
    return any(k.startswith(LANGID_PREFIX) for k in record.get("attributes", {}))


def quality_section(runs: list[Run]) -> Section:
    section = Section("Language and quality scores")
    per_run = {r.name: v for r in runs if (v := tag_values(r)) is not None}
    if not per_run:
        section.missing = "no attributes/tags (langid, gopher) in this run"
        return section
    keys = [("langid top-language score", "langid: score of the top language", False), *QUALITY_KEYS]
    for key, label, log in keys:
        series = [
            (src if len(per_run) == 1 else f"{src} · {name}", vals[key])
            for name, (values, _) in per_run.items()
            for src, vals in sorted(values.items())
            if vals.get(key)
        ]
        if not series:
            continue
        fig, ax = new_fig()
        data = [np.asarray(v, dtype=float) for _, v in series]
        if log:
            data = [np.maximum(d, 1.0) for d in data]
            lo, hi = min(d.min() for d in data), max(d.max() for d in data)
            bins = np.geomspace(lo, max(hi, lo * 1.01), 30)
            ax.set_xscale("log")
        else:
            lo, hi = min(d.min() for d in data), max(d.max() for d in data)
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 30)
        for (name, _), d in zip(series, data, strict=True):
            ax.hist(d, bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("documents")
        ax.set_title(label)
        ax.legend(fontsize="small")
        section.figures.append(
            (f"tags_{key.removeprefix('tags__').replace(' ', '_').replace('-', '_')}", fig)
        )
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.name not in per_run:
            continue
        values, languages = per_run[run.name]
        table = []
        for source in sorted(values):
            langs = sorted(((n, lang) for (s, lang), n in languages.items() if s == source), reverse=True)
            total = sum(n for n, _ in langs)
            scores = values[source].get("langid top-language score", [])
            table.append(
                {
                    "source": source,
                    "documents": total,
                    "top languages": ", ".join(f"{lang} {n / total:.0%}" for n, lang in langs[:4])
                    if total
                    else "",
                    "median top score": float(np.median(scores)) if scores else None,
                    **{
                        f"median {k.rsplit('__', 1)[-1]}": float(np.median(values[source][k]))
                        for k, _, _ in QUALITY_KEYS[:2]
                        if values[source].get(k)
                    },
                }
            )
        rows += with_run(run, table, runs)
    section.text = (
        "Document-level scores of the tags stage (before any filtering), per source: "
        "the input the mix rules decided on."
    )
    section.tables.append(("Top language per document and median scores, per source", rows))
    return section
