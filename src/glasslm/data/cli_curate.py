"""``glasslm data corpus`` (the embedded default corpus) and ``glasslm data tag`` (taggers)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from glasslm.artifacts import create_artifact
from glasslm.clitools import (
    add_config_options,
    add_json_flag,
    add_out,
    add_verb,
    emit,
    format_table,
    resolve_config,
    stage_verbs,
)
from glasslm.data.corpus import CorpusRun, build_corpus
from glasslm.data.tag import TagRun, run_tag


def register(sub: Any) -> None:
    verbs = stage_verbs(sub, "data", "curate data: corpus, tag, dedupe, decon, mix, why, stats")
    p = add_verb(verbs, "corpus", _corpus,
                 "build the embedded corpus (Python stdlib code and docs, /usr/share/doc, man pages)")
    add_out(p)
    add_config_options(p, run_section="corpus", wrap="corpus")
    add_json_flag(p)
    p.epilog = (p.epilog or "") + "\nExample: glasslm data corpus --out runs/demo/corpus --corpus.max_bytes_web=2e6"

    p = add_verb(verbs, "tag", _tag, "run taggers over documents; writes a Dolma-layout attributes artifact")
    p.add_argument("documents", help="documents artifact, or a run directory holding corpus/")
    p.add_argument("--taggers", default=None,
                   help="comma-separated tagger names (default: tag.taggers; see docs/data-tagging.md)")
    p.add_argument("--experiment", default=None, help="attribute name prefix (default: tag.experiment)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: all CPUs)")
    p.add_argument("--executor", choices=["local", "process", "ray"], default=None,
                   help="process pool (default), in-process, or Ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_out(p)
    add_config_options(p, run_section="tag", wrap="tag")
    add_json_flag(p)


def _corpus(args: argparse.Namespace) -> int:
    run = resolve_config(CorpusRun, args)
    run.corpus.validate()
    start = time.perf_counter()
    with create_artifact(args.out, "documents", config=run) as w:
        reports, notes = build_corpus(run.corpus, w.path)
        w.metrics = {
            "docs": sum(r.docs for r in reports.values()),
            "bytes": sum(r.bytes for r in reports.values()),
            "sources": {name: r.to_json() for name, r in reports.items()},
            "notes": notes,
            "seconds": round(time.perf_counter() - start, 3),
        }
        metrics = w.metrics
    data = {"out": str(args.out), **metrics}

    def render(d: dict[str, Any]) -> str:
        rows = [{"source": name, "docs": s["docs"], "MB": round(s["bytes"] / 1e6, 3), "shards": s["shards"],
                 "candidates": s["candidates"], "skipped": sum(s["skipped"].values())}
                for name, s in d["sources"].items()]
        rows.append({"source": "total", "docs": d["docs"], "MB": round(d["bytes"] / 1e6, 3),
                     "shards": sum(r["shards"] for r in rows)})
        lines = [f"wrote {d['out']} in {d['seconds']:.1f} s", format_table(rows)]
        lines += [f"note: {n}" for n in d["notes"]]
        return "\n".join(lines)

    emit(args, data, render)
    return 0


def _tag(args: argparse.Namespace) -> int:
    run = resolve_config(TagRun, args)
    if args.taggers is not None:
        run.tag.taggers = [t.strip() for t in args.taggers.split(",") if t.strip()]
    if args.experiment is not None:
        run.tag.experiment = args.experiment
    if args.workers is not None:
        run.workers = args.workers
    if args.executor is not None:
        run.executor = args.executor
    metrics = run_tag(args.documents, args.out, run, progress=not args.no_progress and not args.json)
    data = {"out": str(args.out), **metrics}

    def render(d: dict[str, Any]) -> str:
        lines = [
            f"wrote {d['out']}: {d['docs']:,} documents, {d['bytes'] / 1e6:.2f} MB in {d['shards']} shards "
            f"({d['shards_resumed']} resumed), {d['seconds']:.1f} s, "
            f"{d['docs_per_s'] or 0:,.0f} docs/s, {d['mb_per_s'] or 0:.2f} MB/s",
        ]
        if d["quarantined"]:
            lines.append(f"quarantined {d['quarantined']} lines (see quarantine.jsonl):")
            lines.append(format_table([{"reason": k, "lines": v} for k, v in d["quarantined_by_reason"].items()]))
        return "\n".join(lines)

    emit(args, data, render)
    return 0
