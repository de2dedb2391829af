"""What a release says about its data, read from the run's artifacts: the ledger joined with the corpus
documents (for their licences), per-rule removals, the held-out split and the decontamination result.

Every number of the datasheet comes from here, so a test can compare them with the ledger directly.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glasslm import artifacts
from glasslm.data import ledger
from glasslm.data.documents import iter_documents, shard_names
from glasslm.release.licenses import UNKNOWN

TRAINED = ("kept", "modified")  # decisions whose documents reach the weights (when their split is train)


@dataclass
class DataFacts:
    mix: Path
    documents: Path | None
    summary: dict[str, Any]  # ledger.summary
    # source -> licence -> {"docs", "bytes"}: every input document, and those trained on
    licenses: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    trained_licenses: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    unlicensed: list[dict[str, Any]] = field(default_factory=list)  # {source, id, shard, line, split}
    rules: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    decon: dict[str, Any] | None = None
    corpus: dict[str, Any] = field(default_factory=dict)  # the documents artifact's manifest metrics

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.summary,
            "licenses": self.licenses,
            "trained_licenses": self.trained_licenses,
            "unlicensed_documents": len(self.unlicensed),
            "rules": self.rules,
            "decon": self.decon,
        }


def rule_rows(table: Any) -> list[dict[str, Any]]:
    """Per rule that decided a document (``first_rule``): documents and bytes it removed (a removed or
    quarantined document, or one left out of both splits), and documents it modified with the bytes the
    modification took out (input bytes minus written bytes)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in table.select(["first_rule", "decision", "split", "bytes", "output_bytes"]).to_pylist():
        rule = r["first_rule"]
        if rule is None:
            continue
        row = rows.setdefault(
            rule,
            {
                "rule": rule,
                "docs_removed": 0,
                "bytes_removed": 0,
                "docs_modified": 0,
                "bytes_removed_by_modification": 0,
            },
        )
        # the same condition as ledger.summary's by_rule, so the two agree
        if r["decision"] in ("removed", "quarantined") or (r["split"] == "none" and r["first_rule"]):
            row["docs_removed"] += 1
            row["bytes_removed"] += r["bytes"]
        elif r["decision"] == "modified":
            row["docs_modified"] += 1
            row["bytes_removed_by_modification"] += r["bytes"] - (r["output_bytes"] or 0)
    return sorted(rows.values(), key=lambda r: (-r["docs_removed"], -r["docs_modified"], r["rule"]))


def _add(table: dict[str, dict[str, dict[str, int]]], source: str, lic: str, nbytes: int) -> None:
    counts = table.setdefault(source, {}).setdefault(lic, {"docs": 0, "bytes": 0})
    counts["docs"] += 1
    counts["bytes"] += nbytes


def data_facts(run: Path) -> DataFacts:
    mix = artifacts.find_artifact(run, "mix")
    table = ledger.read(mix)
    documents = artifacts.input_of_kind(mix, "documents")
    facts = DataFacts(mix=mix, documents=documents, summary=ledger.summary(table), rules=rule_rows(table))
    mix_manifest = artifacts.read_manifest(mix)
    facts.recipe = mix_manifest.get("config") or {}
    rows = {
        (r["shard"], r["line"]): r
        for r in table.select(["shard", "line", "id", "source", "bytes", "decision", "split"]).to_pylist()
    }
    if documents is not None and (documents / artifacts.MANIFEST).is_file():
        facts.corpus = artifacts.read_manifest(documents).get("metrics") or {}
        for name, path in shard_names(documents):
            for line, doc in iter_documents(path):
                row = rows.get((name, line))
                if row is None:
                    continue
                lic = str((doc.get("metadata") or {}).get("license") or UNKNOWN)
                source = row["source"] or "(no source)"
                _add(facts.licenses, source, lic, row["bytes"])
                if row["split"] == "train" and row["decision"] in TRAINED:
                    _add(facts.trained_licenses, source, lic, row["bytes"])
                if lic == UNKNOWN:
                    facts.unlicensed.append(
                        {
                            "source": source,
                            "id": row["id"],
                            "shard": name,
                            "line": line,
                            "split": row["split"],
                            "decision": row["decision"],
                        }
                    )
    decon = _decon(mix)
    facts.decon = decon
    return facts


def _decon(mix: Path) -> dict[str, Any] | None:
    """The decontamination artifact the mix read (an attributes artifact made by ``data decon``)."""
    for ref, where in artifacts.inputs_of(mix):
        if ref.get("kind") != "attributes" or not (where / artifacts.MANIFEST).is_file():
            continue
        manifest = artifacts.read_manifest(where)
        metrics = manifest.get("metrics") or {}
        if "contaminated_documents" in metrics:
            return {
                "artifact": where.name,
                **{k: metrics[k] for k in ("documents", "contaminated_documents", "tasks") if k in metrics},
            }
    return None


def group_by_source(unlicensed: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in unlicensed:
        out[doc["source"]].append(doc)
    return dict(out)
