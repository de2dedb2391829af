"""``glasslm data corpus`` (the default corpus), ``glasslm data import`` (outside text) and
``glasslm data tag`` (taggers)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from glasslm.artifacts import create_artifact
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
from glasslm.data.corpus import CorpusRun, build_corpus, reader_versions
from glasslm.data.documents import location
from glasslm.data.importers import FORMATS, ImportInput, ImportResult, run_import
from glasslm.data.tag import TagRun, run_tag


def add_verbs(verbs: Any) -> None:
    p = add_verb(
        verbs,
        "corpus",
        _corpus,
        "build the embedded corpus (the Python installation's stdlib code and documentation, and a WARC crawl "
        "of the pinned packages' pages)",
        "documents",
    )
    add_no_progress(p)
    add_out(p)
    add_config_options(p, run_section="corpus", wrap="corpus")
    add_json_flag(p)
    p.epilog = (
        p.epilog or ""
    ) + "\nExample: glasslm data corpus --out runs/demo/corpus --corpus.max_bytes_web=2e6"

    p = add_verb(
        verbs,
        "import",
        _import,
        "import outside text as a documents artifact: Dolma JSONL, Parquet, Arrow, HF datasets "
        "folders, text/Markdown/code trees, WARC crawls (docs/data-import.md)",
        "documents",
    )
    p.add_argument(
        "src",
        nargs="*",
        metavar="[SOURCE=]PATH",
        help="file, directory, glob or URL (s3://, gs://, hf://); 'web=crawl/*.warc.gz' names the "
        "domain of that path (default: --source)",
    )
    p.add_argument(
        "--source",
        default="",
        help="domain (Dolma source) of the SRC paths; held-out split and "
        "bits per byte are per domain (JSONL default: the records' own)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="input format (default: by file suffix; a directory without data files is a text tree)",
    )
    p.add_argument("--text-column", default="text", help="Parquet/Arrow/HF: the text column")
    p.add_argument(
        "--id-column", default="id", help="Parquet/Arrow/HF: the id column (missing ids are derived)"
    )
    p.add_argument("--link", action="store_true", help="Dolma JSONL: reference the files in place, no copy")
    p.add_argument("--max-bytes", type=float, default=0, help="stop each SRC after this many bytes of text")
    p.add_argument(
        "--extend",
        type=local_path,
        default=None,
        help="documents artifact to start from (several imports make one multi-domain corpus)",
    )
    add_no_progress(p)
    add_out(p, urls=True)
    add_config_options(p, run_section="corpus", wrap="corpus")
    add_json_flag(p)
    p.epilog = (p.epilog or "") + (
        "\nExamples:\n  glasslm data import shards/ --source web --out runs/mine/corpus\n"
        "  glasslm data import web=crawl/*.warc.gz code=src/ --format text --out runs/mine/corpus"
    )

    p = add_verb(
        verbs,
        "tag",
        _tag,
        "run taggers over documents; writes a Dolma-layout attributes artifact",
        "attributes",
    )
    p.add_argument("documents", type=location, help="documents artifact, or a run directory holding corpus/")
    p.add_argument(
        "--taggers",
        default=None,
        help="comma-separated tagger names (default: tag.taggers; see docs/data-tagging.md)",
    )
    p.add_argument("--experiment", default=None, help="attribute name prefix (default: tag.experiment)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: all CPUs)")
    p.add_argument(
        "--executor",
        choices=["local", "process", "ray"],
        default=None,
        help="process pool (default), in-process, or Ray",
    )
    add_no_progress(p)
    add_out(p, urls=True)
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
            "versions": reader_versions(),
        }
        metrics = w.metrics
    data = {"out": str(args.out), **metrics}

    def render(d: dict[str, Any]) -> str:
        rows = [
            {
                "source": name,
                "docs": s["docs"],
                "MB": round(s["bytes"] / 1e6, 3),
                "shards": s["shards"],
                "candidates": s["candidates"],
                "skipped": sum(s["skipped"].values()),
            }
            for name, s in d["sources"].items()
        ]
        rows.append(
            {
                "source": "total",
                "docs": d["docs"],
                "MB": round(d["bytes"] / 1e6, 3),
                "shards": sum(r["shards"] for r in rows),
            }
        )
        lines = [f"wrote {d['out']} in {d['seconds']:.1f} s", format_table(rows)]
        lines += [f"note: {n}" for n in d["notes"]]
        return "\n".join(lines)

    emit(args, data, render)
    return 0


_NAMED = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


def cli_inputs(args: argparse.Namespace) -> list[ImportInput]:
    """One input group per SRC, with the command line's options; ``NAME=PATH`` names its domain."""
    out = []
    for src in args.src:
        named = _NAMED.match(src)
        source, path = (named.group(1), named.group(2)) if named else (args.source, src)
        out.append(
            ImportInput(
                path=path,
                source=source,
                format=args.format,
                text_column=args.text_column,
                id_column=args.id_column,
                link=args.link,
                max_bytes=int(args.max_bytes),
            )
        )
    return out


def _import(args: argparse.Namespace) -> int:
    run = resolve_config(CorpusRun, args)
    run.corpus.inputs = [*run.corpus.inputs, *cli_inputs(args)]  # recorded in the manifest as run
    run.corpus.validate()
    start = time.perf_counter()
    with create_artifact(args.out, "documents", config=run, inputs=[args.extend] if args.extend else []) as w:
        result: ImportResult = run_import(
            run.corpus.inputs,
            w.path,
            shard_bytes=run.corpus.shard_bytes,
            date=run.corpus.date,
            extend=args.extend,
        )
        w.metrics = {
            **result.metrics(),
            "seconds": round(time.perf_counter() - start, 3),
            "versions": reader_versions(),
        }
        w.extra["sources"] = result.sources  # lineage outside the artifact (glasslm manifest verify)
        metrics = w.metrics
    data = {"out": str(args.out), **metrics}

    def render(d: dict[str, Any]) -> str:
        rows = [
            {"domain": name, "docs": s["docs"], "MB": round(s["bytes"] / 1e6, 3), "shards": s["shards"]}
            for name, s in d["domains"].items()
        ]
        lines = [
            f"wrote {d['out']} in {d['seconds']:.1f} s: {d['records']:,} records read = {d['imported']:,} "
            f"imported + {d['quarantined']:,} quarantined",
            format_table(rows),
        ]
        if d["quarantined"]:
            lines.append("quarantined (see quarantine.jsonl):")
            lines.append(
                format_table([{"reason": k, "records": v} for k, v in d["quarantined_by_reason"].items()])
            )
        if d["duplicate_ids"]["count"]:
            lines.append(f"duplicate ids: {d['duplicate_ids']['count']} (see manifest metrics.duplicate_ids)")
        lines += [f"note: {n}" for n in d["notes"][:20]]
        if len(d["notes"]) > 20:
            lines.append(f"note: … {len(d['notes']) - 20} more in the manifest")
        return "\n".join(lines)

    emit(args, data, render)
    if not metrics["imported"]:  # the artifact stays, for its quarantine: but an empty corpus is a mistake
        print(
            f"glasslm: error: nothing was imported: all {metrics['records']:,} records were quarantined "
            f"(see {args.out}/quarantine.jsonl)",
            file=sys.stderr,
        )
        return 1
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
            lines.append(
                format_table([{"reason": k, "lines": v} for k, v in d["quarantined_by_reason"].items()])
            )
        return "\n".join(lines)

    emit(args, data, render)
    return 0
