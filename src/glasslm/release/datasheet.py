"""DATASHEET.md for the curated corpus, after Gebru et al. (2021), "Datasheets for Datasets": the questions
of its sections answered with the run's figures (release/facts.py), never typed by hand."""

from __future__ import annotations

import json
from typing import Any

from glasslm.release.facts import DataFacts, group_by_source
from glasslm.report.render import markdown_table

DATASHEET_SECTIONS = [
    "Motivation",
    "Composition",
    "Collection process",
    "Preprocessing and cleaning",
    "PII and moderation",
    "Held-out split",
    "Licences",
    "Uses",
    "Distribution",
    "Known gaps",
    "Maintenance",
]
LISTED_PER_SOURCE = (
    20  # unlicensed documents named in the datasheet; all are in glasslm/data/unlicensed_documents.jsonl
)


def source_rows(facts: DataFacts) -> list[dict[str, Any]]:
    """Per recipe source: the ledger's funnel (input, decisions, split, written)."""
    return [
        {
            "source": s,
            "input docs": f["input_docs"],
            "input bytes": f["input_bytes"],
            "kept": f["kept"],
            "modified": f["modified"],
            "removed": f["removed"],
            "quarantined": f["quarantined"],
            "train docs": f["train_docs"],
            "held-out docs": f["held_out_docs"],
            "written docs": f["output_docs"],
            "written bytes": f["output_bytes"],
        }
        for s, f in facts.summary["funnel"].items()
    ]


def license_rows(facts: DataFacts) -> list[dict[str, Any]]:
    rows = []
    for source in sorted(facts.licenses):
        for lic, counts in sorted(facts.licenses[source].items()):
            trained = facts.trained_licenses.get(source, {}).get(lic, {"docs": 0, "bytes": 0})
            rows.append(
                {
                    "source": source,
                    "licence": lic,
                    "docs": counts["docs"],
                    "bytes": counts["bytes"],
                    "trained-on docs": trained["docs"],
                    "trained-on bytes": trained["bytes"],
                }
            )
    return rows


def _recipe_flags(recipe: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    return [{"source": s.get("name"), **{k: s.get(k) for k in keys}} for s in recipe.get("sources", [])]


def write_datasheet(facts: DataFacts, name: str, license_check: dict[str, Any]) -> str:
    s = facts.summary
    d = s["decisions"]
    corpus_sources = facts.corpus.get("sources") or {}
    lines = [
        f"# Datasheet: the training corpus of {name}",
        "",
        "After Gebru et al. (2021), *Datasheets for Datasets*. Every figure is read from the run: the mix "
        "ledger (`glasslm/manifests/mix`, summary in `glasslm/data/ledger_summary.json`), the corpus "
        "documents and the attribute artifacts.",
        "",
    ]

    lines += [
        "## Motivation",
        "",
        f"The corpus was curated to pretrain {name}, a glasslm model whose every data decision is "
        "recorded: one ledger row per input line, with the rule that decided it.",
        "",
    ]

    lines += [
        "## Composition",
        "",
        f"{s['input']['docs']:,} input documents ({s['input']['bytes']:,} UTF-8 bytes) in "
        f"{len(s['funnel'])} sources; {s['output_docs']:,} documents ({s['output_bytes']:,} bytes) written "
        "after curation, counting up-sampled copies.",
        "",
    ]
    lines += markdown_table("Per source, from the ledger", source_rows(facts))

    lines += ["## Collection process", ""]
    if corpus_sources:
        lines += markdown_table(
            "What the corpus stage read (documents artifact metrics)",
            [
                {
                    "source": src,
                    "docs": v.get("docs"),
                    "bytes": v.get("bytes"),
                    "candidates": v.get("candidates"),
                    "skipped": ", ".join(f"{k} {n}" for k, n in (v.get("skipped") or {}).items()),
                }
                for src, v in corpus_sources.items()
            ],
        )
    else:
        lines += ["The documents artifact records no per-source collection figures.", ""]
    lines += [
        f"Documents artifact: `{facts.documents.name if facts.documents else 'unknown'}` (its manifest is "
        "in `glasslm/manifests/`, with the command, configuration and, for imports, every source file's "
        "hash).",
        "",
    ]

    lines += [
        "## Preprocessing and cleaning",
        "",
        f"Decisions: kept {d['kept']:,}, modified {d['modified']:,}, removed {d['removed']:,}, "
        f"quarantined {d['quarantined']:,} (= {s['input']['docs']:,} input documents). Each rule below is "
        "the first that fired on a document (`first_rule` in the ledger).",
        "",
    ]
    lines += (
        markdown_table(
            "Every recipe rule that decided a document: documents and bytes it removed", facts.rules
        )
        if facts.rules
        else ["No rule removed or modified a document.", ""]
    )

    lines += ["## PII and moderation", ""]
    lines += markdown_table(
        "PII masking and moderation per source (from the recipe)",
        _recipe_flags(facts.recipe, "pii_mask", "toxicity_max", "language", "dedupe", "decon"),
    )
    pii = [r for r in facts.rules if "pii" in r["rule"]]
    tox = [r for r in facts.rules if "tox" in r["rule"]]
    lines += [
        f"PII rules decided {sum(r['docs_removed'] + r['docs_modified'] for r in pii):,} documents; moderation "
        f"(toxicity) rules removed {sum(r['docs_removed'] for r in tox):,}. Every moderation removal is a "
        "ledger row with its score (`glasslm data why ID`).",
        "",
    ]
    if facts.decon is not None:
        lines += [
            f"Decontamination (`{facts.decon['artifact']}`): {facts.decon.get('contaminated_documents', 0):,} "
            f"of {facts.decon.get('documents', 0):,} documents overlap an evaluation set "
            f"({', '.join(facts.decon.get('tasks') or {}) or 'no task named'}).",
            "",
        ]

    lines += [
        "## Held-out split",
        "",
        "Decided in the mix, seeded, per source; held-out documents never enter training and the "
        "perplexity evaluation reads them.",
        "",
    ]
    lines += markdown_table(
        "Documents per split",
        [
            {"source": src, "train": f["train_docs"], "held_out": f["held_out_docs"]}
            for src, f in s["funnel"].items()
        ],
    )

    lines += [
        "## Licences",
        "",
        f"Model licence: `{license_check['model_license']}`. Licence check: "
        + (
            "passed."
            if license_check["ok"]
            else (
                "**overridden with --allow-license-issues** (recorded in the release manifest): "
                if license_check["overridden"]
                else "failed: "
            )
            + "; ".join(
                f"{p['source']}: {p['docs']:,} documents with licence {p['license']} ({p['why']})"
                for p in license_check["problems"]
            )
        ),
        "",
    ]
    lines += markdown_table(
        "Documents per source and licence (`metadata.license`; (none): no licence recorded)",
        license_rows(facts),
    )
    unlicensed = group_by_source(facts.unlicensed)
    lines += [
        f"Documents without a licence: {len(facts.unlicensed):,}"
        + (
            " — " + ", ".join(f"{src} {len(v):,}" for src, v in sorted(unlicensed.items()))
            if unlicensed
            else ""
        )
        + ". All are listed in `glasslm/data/unlicensed_documents.jsonl`.",
        "",
    ]
    for src, docs in sorted(unlicensed.items()):
        shown = ", ".join(f"`{doc['id']}`" for doc in docs[:LISTED_PER_SOURCE])
        more = f" and {len(docs) - LISTED_PER_SOURCE:,} more" if len(docs) > LISTED_PER_SOURCE else ""
        lines += [f"- {src}: {shown}{more}"]
    lines += [""]

    lines += [
        "## Uses",
        "",
        "Pretraining the model of this release. The documents themselves are not "
        "redistributed here: the release ships the ledger summary and the manifests, not the text.",
        "",
    ]
    lines += [
        "## Distribution",
        "",
        "Not distributed; recreate it with the commands in the model card "
        "(`README.md`, *How to reproduce*): the pipeline is deterministic for the same versions.",
        "",
    ]
    gaps = [
        f"{len(facts.unlicensed):,} documents carry no licence" if facts.unlicensed else None,
        *[
            f"source {src} has no held-out documents"
            for src, f in s["funnel"].items()
            if not f["held_out_docs"] and not src.startswith("(")
        ],
        f"{d['quarantined']:,} input lines were unusable (quarantined)" if d["quarantined"] else None,
        "no decontamination artifact was found" if facts.decon is None else None,
    ]
    lines += [
        "## Known gaps",
        "",
        *([f"- {g}" for g in gaps if g] or ["- none found in the run's records"]),
        "",
    ]
    lines += [
        "## Maintenance",
        "",
        "A release is immutable: a new run makes a new release. "
        "`glasslm release verify DIR` re-checks this one.",
        "",
    ]
    lines += ["<!-- figures: " + json.dumps({"input": s["input"], "decisions": d}) + " -->", ""]
    return "\n".join(lines)
