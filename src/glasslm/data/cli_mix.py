"""``glasslm data dedupe|decon|mix|why|stats``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from glasslm import artifacts
from glasslm.clitools import (
    add_config_options,
    add_json_flag,
    add_no_progress,
    add_out,
    add_verb,
    emit,
    format_table,
    local_path,
    resolve_config,
)
from glasslm.config import ConfigError, to_dict
from glasslm.data import decon, dedupe, executors, ledger, mixer
from glasslm.data.documents import location
from glasslm.data.executors import fingerprint, work_dir


def add_verbs(verbs: Any) -> None:
    p = add_verb(
        verbs,
        "dedupe",
        _dedupe,
        "exact document/paragraph and MinHash near-duplicate attributes",
        "attributes",
    )
    p.add_argument("documents", type=location, help="documents artifact (or run directory)")
    p.add_argument("--experiment", default=None, help="attribute name prefix (default: dedupe)")
    _parallel_flags(p)
    add_out(p, urls=True)
    add_config_options(p, run_section="dedupe", wrap="dedupe")

    p = add_verb(verbs, "decon", _decon, "n-gram overlap of documents with evaluation sets", "attributes")
    p.add_argument("documents", type=location, help="documents artifact (or run directory)")
    p.add_argument(
        "--tasks", type=local_path, nargs="*", default=[], help="task files (JSONL, .arrow, .parquet)"
    )
    p.add_argument("--experiment", default=None, help="attribute name prefix (default: decon)")
    _parallel_flags(p)
    add_out(p, urls=True)
    add_config_options(p, run_section="decon", wrap="decon")

    p = add_verb(verbs, "mix", _mix, "apply a recipe: curated train/held-out shards and a ledger", "mix")
    p.add_argument("recipe", type=local_path, help="recipe YAML (see configs/recipes/default.yaml)")
    p.add_argument(
        "--documents", type=location, default=None, help="documents artifact (overrides the recipe)"
    )
    p.add_argument(
        "--attributes",
        type=location,
        nargs="*",
        default=None,
        help="attribute artifacts (override the recipe)",
    )
    _parallel_flags(p)
    add_out(p, urls=True)
    p.set_defaults(accepts_overrides=True)
    p.epilog = (p.epilog or "") + "\nTop-level recipe keys may be overridden: --seed=5 --decon_heldout=false"

    p = add_verb(
        verbs, "why", _why, "a document's full story: input line, attributes, rules, decision, output"
    )
    p.add_argument("doc_id", help="document id")
    p.add_argument("mix", nargs="?", type=local_path, default=Path("."), help="mix artifact or run directory")
    add_json_flag(p)

    p = add_verb(verbs, "stats", _stats, "the funnel per source and rule (docs and bytes)")
    p.add_argument("mix", type=local_path, help="mix artifact or run directory")
    add_json_flag(p)


def _parallel_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    p.add_argument("--executor", choices=["local", "process", "ray"], default=None, help="default: process")
    add_no_progress(p)


def _documents(path: Path) -> Path:
    return artifacts.find_artifact(path, "documents", subdirs=["corpus", "documents"])


def _apply_flags(job: Any, args: argparse.Namespace) -> None:
    if getattr(args, "experiment", None):
        job.experiment = args.experiment
    if args.workers is not None:
        job.workers = args.workers
    if args.executor is not None:
        job.executor = args.executor


def _finish(work: Path) -> None:
    executors.remove_work(work)


def _dedupe(args: argparse.Namespace) -> int:
    job = resolve_config(dedupe.DedupeJob, args)
    _apply_flags(job, args)
    docs = _documents(args.documents)
    work = work_dir(args.out, fingerprint("dedupe", to_dict(job.dedupe), artifacts.manifest_hash(docs)))
    with artifacts.create_artifact(args.out, "attributes", config=job, inputs=[docs]) as w:
        w.metrics.update(dedupe.run(docs, w.path, job, scratch=work))
        w.extra["attribute_names"] = [
            f"{job.experiment}__dedupe__{n}"
            for n, on in (
                ("exact_doc", job.dedupe.exact_docs),
                ("near_doc", job.dedupe.near),
                ("paragraphs", job.dedupe.paragraphs),
            )
            if on
        ]
        metrics = w.metrics
    _finish(work)
    print(
        f"wrote {args.out}: {metrics['documents']:,} documents, {metrics['exact_duplicate_docs']:,} exact and "
        f"{metrics['near_duplicate_docs']:,} near duplicates, {metrics['duplicate_paragraphs']:,} duplicate "
        f"paragraphs ({metrics['mb_per_s']} MB/s)"
    )
    return 0


def _decon(args: argparse.Namespace) -> int:
    job = resolve_config(decon.DeconJob, args)
    _apply_flags(job, args)
    docs = _documents(args.documents)
    tasks = [Path(t) for t in args.tasks]
    work = work_dir(
        args.out,
        fingerprint(
            "decon", to_dict(job.decon), artifacts.manifest_hash(docs), [str(t.resolve()) for t in tasks]
        ),
    )
    with artifacts.create_artifact(args.out, "attributes", config=job, inputs=[docs]) as w:
        w.metrics.update(decon.run(docs, tasks, w.path, job, scratch=work))
        w.extra["task_files"] = [str(t) for t in tasks]
        metrics = w.metrics
    _finish(work)
    print(
        f"wrote {args.out}: {metrics['contaminated_documents']:,} of {metrics['documents']:,} documents overlap "
        f"{len(metrics['tasks'])} evaluation set(s)"
    )
    return 0


def _resolve(path: str | Path, recipe_file: Path) -> Path:
    if "://" in str(path):  # an object-store artifact (s3://…): Path() would fold its '//'
        return location(path)  # type: ignore[return-value]  # a UPath: find_artifact takes both
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (recipe_file.parent / path).exists():
        return recipe_file.parent / path
    return path


def _mix(args: argparse.Namespace) -> int:
    from glasslm import config as cfg

    recipe = cfg.load(mixer.Recipe, args.recipe, args.overrides)
    if args.documents is not None:
        recipe.documents = str(args.documents)
    if args.attributes is not None:
        recipe.attributes = [str(a) for a in args.attributes]
    if args.workers is not None:
        recipe.workers = args.workers
    if args.executor is not None:
        recipe.executor = args.executor
    if not recipe.documents:
        raise ConfigError(f"{args.recipe}: no 'documents' in the recipe and no --documents given")
    docs = _documents(_resolve(recipe.documents, args.recipe))
    attrs = [artifacts.find_artifact(_resolve(a, args.recipe), "attributes") for a in recipe.attributes]
    inputs = [docs, *attrs]
    work = work_dir(
        args.out, fingerprint("mix", to_dict(recipe), [artifacts.manifest_hash(i) for i in inputs])
    )
    with artifacts.create_artifact(args.out, "mix", config=recipe, inputs=inputs) as w:
        w.metrics.update(mixer.run(recipe, docs, attrs, w.path, work))
        metrics = w.metrics
    _finish(work)
    d = metrics["decisions"]
    print(
        f"wrote {args.out}: {metrics['input']['docs']:,} input lines -> kept {d['kept']:,}, modified "
        f"{d['modified']:,}, removed {d['removed']:,}, quarantined {d['quarantined']:,}; "
        f"{metrics['output_docs']:,} documents written ({metrics['mb_per_s']} MB/s)"
    )
    for warning in metrics["suspect_rules"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _mix_dir(path: Path) -> Path:
    return artifacts.find_artifact(path, "mix", subdirs=["mix"])


def _why(args: argparse.Namespace) -> int:
    mix_dir = _mix_dir(args.mix)
    data = ledger.story(mix_dir, args.doc_id)
    if not data["rows"]:
        raise artifacts.ArtifactError(
            f"{mix_dir}: no document with id '{args.doc_id}' in the ledger"
            + _quarantined_before(mix_dir, args.doc_id)
        )

    def render(d: dict[str, Any]) -> str:
        out = []
        for row in d["rows"]:
            out.append(f"document {row['id']}  ({row['bytes']:,} bytes)")
            out.append(f"  input:        {row['input']}")
            if row.get("origin"):
                out.append(f"  origin:       {row['origin']}")
            out.append(f"  source:       {row['source']} -> recipe source {row['recipe_source']}")
            out.append(
                f"  decision:     {row['decision']}"
                + (f" by {row['first_rule']}" if row["first_rule"] else "")
            )
            out.append(f"  duplicate_of: {row['duplicate_of']}")
            out.append(f"  split:        {row['split']}")
            if row["output_file"]:
                out.append(
                    f"  output:       {row['output_file']}:{row['output_line']} ({row['copies']} cop"
                    f"{'y' if row['copies'] == 1 else 'ies'}, {row['output_bytes']:,} bytes)"
                )
            out.append("  rules fired:")
            out.extend(f"    {r['rule']} = {json.dumps(r['value'])}" for r in row["rules"])
            if not row["rules"]:
                out.append("    (none)")
            out.append("  attributes:")
            for name, spans in sorted(row["attributes"].items()):
                shown = json.dumps(spans if len(spans) <= 4 else [*spans[:4], f"... {len(spans) - 4} more"])
                out.append(f"    {name} = {shown}")
        return "\n".join(out)

    emit(args, data, render)
    return 0


def _quarantined_before(mix_dir: Path, doc_id: str) -> str:
    """Where a record that never reached the mix went: the documents artifact's quarantine (an import's
    unusable records), found through the mix's lineage."""
    documents = artifacts.input_of_kind(mix_dir, "documents")
    quarantine = documents / "quarantine.jsonl" if documents is not None else None
    if quarantine is None or not quarantine.is_file():
        return ""
    # the raw line may be broken JSON: look for its "id" field as text
    pattern = re.compile(r'"id"\s*:\s*' + re.escape(json.dumps(doc_id)))
    with open(quarantine, encoding="utf-8", errors="replace") as f:
        for line in f:
            record = json.loads(line)
            if pattern.search(str(record.get("raw", ""))):
                return (
                    f"; it was quarantined before the mix: {record.get('file')}:{record.get('line')}, "
                    f"{record.get('reason')} (see {quarantine})"
                )
    return f" (nor in {quarantine})"


def _stats(args: argparse.Namespace) -> int:
    mix_dir = _mix_dir(args.mix)
    summary = ledger.summary(ledger.read(mix_dir))
    data = {"mix": str(mix_dir), **summary, "rows": ledger.stats_rows(summary)}

    def render(d: dict[str, Any]) -> str:
        dec = d["decisions"]
        head = (
            f"{d['mix']}: {d['input']['docs']:,} input lines, {d['input']['bytes']:,} bytes; kept {dec['kept']:,}, "
            f"modified {dec['modified']:,}, removed {dec['removed']:,}, quarantined {dec['quarantined']:,}; "
            f"{d['output_docs']:,} documents written"
        )
        return head + "\n" + format_table(d["rows"], ["source", "step", "docs", "bytes"])

    emit(args, data, render)
    return 0
