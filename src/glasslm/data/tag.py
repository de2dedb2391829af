"""The ``tag`` stage: run taggers over a documents artifact, write an ``attributes`` artifact.

Layout (Dolma's): one attribute file per document shard, under the shard's name relative to
``documents/``, one line per usable document line in the same order:
``{"id": …, "attributes": {"<experiment>__<tagger>__<name>": [[start, end, score], …]}}``; plus
``quarantine.jsonl`` (every unusable input line with file, line and reason). The manifest's inputs
name the documents artifact; its config holds the stage config and every tagger's name, version and
options.

Shard-parallel through ``executors.map_shards`` (process pool or Ray; results and files do not
depend on the executor). Resumable: each shard's attributes and quarantine lines go to a work
directory beside ``--out`` named by the job's fingerprint (config, taggers, documents manifest
hash, code version), with a done marker per shard; a rerun of the same job skips finished shards.
The artifact is assembled from the work directory (hard links) and published atomically, then the
work directory is removed.

Duplicate ids are quarantined within a shard. A duplicate across shards is only visible to a
sequential pass over all ids; the mixer, which reads the whole corpus in order anyway, handles it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from glasslm.artifacts import create_artifact, find_artifact, input_ref, manifest_hash
from glasslm.config import ConfigError, to_dict
from glasslm.data import executors, storage
from glasslm.data.documents import (
    QUARANTINE_FILE,
    Location,
    Quarantine,
    attributes_path,
    is_url,
    iter_documents,
    read_jsonl,
    shard_names,
    write_jsonl,
)
from glasslm.data.executors import (
    STATE_SUFFIX,
    ExecutorName,
    fingerprint,
    load_state,
    map_shards,
    resumable,
    work_dir,
)
from glasslm.data.progress import stored_bytes
from glasslm.data.taggers import Attributes, available, get_tagger

DEFAULT_TAGGERS = ["langid", "gopher", "c4", "stats", "pii", "code", "toxicity"]
_EXPERIMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TagConfig:
    taggers: list[str] = field(default_factory=lambda: list(DEFAULT_TAGGERS))
    experiment: str = "tags"
    # per-tagger options, e.g. {"langid": {"top_k": 5}}; each tagger lists its own in its module
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 64  # documents handed to a tagger at once (matters for vectorised models)

    def validate(self) -> None:
        if not _EXPERIMENT.match(self.experiment) or "__" in self.experiment:
            raise ConfigError(
                f"config key 'tag.experiment': '{self.experiment}' must be a variable name "
                "without '__' (it becomes the first part of every attribute name)"
            )
        if not self.taggers:
            raise ConfigError("config key 'tag.taggers': give at least one tagger")
        names = available()
        unknown = [t for t in self.taggers if t not in names]
        if unknown:
            raise ConfigError(f"config key 'tag.taggers': unknown {unknown}; available: {', '.join(names)}")
        stray = [t for t in self.options if t not in self.taggers]
        if stray:
            raise ConfigError(f"config key 'tag.options': options for taggers not run: {stray}")
        if self.batch_size < 1:
            raise ConfigError("config key 'tag.batch_size' must be >= 1")


@dataclass
class TagRun:
    """The ``glasslm data tag`` config: the ``tag`` section plus how to run it."""

    tag: TagConfig = field(default_factory=TagConfig)
    workers: int = 0  # 0 = every CPU this process may use
    executor: str = "process"

    def validate(self) -> None:
        if self.executor not in ("local", "process", "ray"):
            raise ConfigError(f"config key 'executor': '{self.executor}' is not one of local, process, ray")
        if self.workers < 0:  # a traceback from the process pool, after the work directory was made
            raise ConfigError(f"config key 'workers' must be >= 0 (0: every CPU), got {self.workers}")


@dataclass(frozen=True)
class ShardJob:
    name: str  # relative to documents/
    path: Location
    work: Path
    experiment: str
    taggers: tuple[tuple[str, str], ...]  # (name, options as canonical JSON): hashable, picklable
    batch_size: int


def _safe(name: str) -> str:
    return name.replace("/", "__")


def _marker(work: Path, name: str) -> Path:
    return work / "done" / f"{_safe(name)}{STATE_SUFFIX}"


@cache
def _instances(specs: tuple[tuple[str, str], ...]) -> list[Any]:
    """Tagger instances for this process (models load once per worker, not once per shard)."""
    return [get_tagger(name, json.loads(options)) for name, options in specs]


def tag_texts(texts: list[str], taggers: list[Any], experiment: str) -> list[dict[str, Any]]:
    """Attributes of a batch of texts under ``<experiment>__<tagger>__<name>`` keys."""
    merged: list[dict[str, Any]] = [{} for _ in texts]
    for tagger in taggers:
        prefix = f"{experiment}__{tagger.name}__"
        results: list[Attributes] = tagger.tag_batch(texts)
        for target, attrs in zip(merged, results, strict=True):
            for key, spans in attrs.items():
                target[prefix + key] = spans
    return merged


def _tag_shard(job: ShardJob) -> dict[str, Any]:
    start = time.perf_counter()
    taggers = _instances(job.taggers)
    quarantine = Quarantine()
    records: list[dict[str, Any]] = []
    sources: Counter[str] = Counter()
    docs = nbytes = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        attrs = tag_texts([d["text"] for d in batch], taggers, job.experiment)
        records.extend({"id": d["id"], "attributes": a} for d, a in zip(batch, attrs, strict=True))
        batch.clear()

    for _, doc in iter_documents(job.path, quarantine, seen_ids=set()):
        batch.append(doc)
        docs += 1
        nbytes += len(doc["text"].encode("utf-8"))
        sources[doc.get("source") or "unknown"] += 1
        if len(batch) >= job.batch_size:
            flush()
    if batch:
        flush()
    write_jsonl(attributes_path(job.work / "attributes", job.name), records)
    write_jsonl(job.work / "quarantine" / f"{_safe(job.name)}.jsonl", quarantine.records)
    return {
        "name": job.name,
        "docs": docs,
        "bytes": nbytes,
        "sources": dict(sources),
        "quarantined": dict(quarantine.counts),
        "seconds": time.perf_counter() - start,
    }


def tag_shard(job: ShardJob) -> dict[str, Any]:
    """Tag one shard, or return the summary a previous run of the same job left for it."""
    return resumable(_marker(job.work, job.name), lambda: _tag_shard(job))


def _fetched(work: Path, name: str) -> Path:
    path = work / "quarantine" / f"{_safe(name)}.jsonl"
    storage.fetch(path)  # small; on the store when the task ran on another machine
    return path


def run_tag(documents: str | Path, out: str | Path, run: TagRun, *, progress: bool = True) -> dict[str, Any]:
    """Tag every shard of ``documents`` (an artifact or a run directory); returns the metrics."""
    config = run.tag
    config.validate()
    run.validate()
    docs_dir = find_artifact(documents, "documents", subdirs=["corpus"])
    shards = shard_names(docs_dir)
    if not shards:
        raise ConfigError(f"{docs_dir}: no document shards under documents/")
    try:
        instances = [get_tagger(name, config.options.get(name)) for name in config.taggers]
    except ValueError as e:  # an unknown option or a bad option value, worded by the tagger
        raise ConfigError(f"config key 'tag.options': {e}") from None
    described = [t.describe() for t in instances]
    specs = tuple((t.name, json.dumps(t.options, sort_keys=True)) for t in instances)
    fp = fingerprint(to_dict(config), described, manifest_hash(docs_dir))  # + the code version
    work = work_dir(out, fp)
    (work / "done").mkdir(exist_ok=True)
    jobs = [ShardJob(name, path, work, config.experiment, specs, config.batch_size) for name, path in shards]
    resumed = set()
    for j in jobs:
        marker = _marker(work, j.name)
        if load_state(marker) is not None:
            if storage.exists(attributes_path(work / "attributes", j.name)):
                resumed.add(j.name)
            else:  # a marker without its output (someone deleted files): redo the shard
                marker.unlink()
    if resumed:
        print(f"tag: resuming — {len(resumed)} of {len(jobs)} shards already done in {work}", file=sys.stderr)

    start = time.perf_counter()
    summaries = map_shards(
        tag_shard,
        jobs,
        workers=run.workers or None,
        executor=_executor(run.executor),
        desc="tag",
        progress=progress,
        sizes=[stored_bytes(j.path) for j in jobs],
        quarantined=lambda summary: summary["quarantined"],
    )
    elapsed = time.perf_counter() - start

    metrics = _metrics(summaries, elapsed, resumed, run)
    # The config is exactly what `--config` takes (glasslm reproduce re-runs with it); the taggers' versions
    # and options as they ran are recorded beside it.
    with create_artifact(
        out, "attributes", config={"tag": to_dict(config)}, inputs=[input_ref(docs_dir)]
    ) as w:
        w.extra["taggers"] = described
        for job in jobs:
            # a hard link, or (an object-store --out) the object the task uploaded: never a download
            storage.place(attributes_path(work / "attributes", job.name), attributes_path(w.path, job.name))
        quarantine_lines = [rec for job in jobs for rec in read_jsonl(_fetched(work, job.name))]
        write_jsonl(w.path / QUARANTINE_FILE, quarantine_lines)
        w.metrics = metrics
        where = str(docs_dir) if is_url(docs_dir) else str(Path(docs_dir).resolve())
        w.extra.update(experiment=config.experiment, documents=where)
    executors.remove_work(work)
    return metrics


def _executor(name: str) -> ExecutorName:
    if name == "ray":
        return "ray"
    return "local" if name == "local" else "process"


def _metrics(
    summaries: list[dict[str, Any]], elapsed: float, resumed: set[str], run: TagRun
) -> dict[str, Any]:
    quarantined: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for s in summaries:
        quarantined.update(s["quarantined"])
        sources.update(s["sources"])
    docs = sum(s["docs"] for s in summaries)
    nbytes = sum(s["bytes"] for s in summaries)
    # throughput over the shards tagged in this run only (a resumed shard costs nothing now)
    fresh = [s for s in summaries if s["name"] not in resumed]
    fresh_docs = sum(s["docs"] for s in fresh)
    fresh_bytes = sum(s["bytes"] for s in fresh)
    return {
        "shards": len(summaries),
        "shards_resumed": len(resumed),
        "docs": docs,
        "bytes": nbytes,
        "docs_per_source": dict(sorted(sources.items())),
        "quarantined": sum(quarantined.values()),
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "seconds": round(elapsed, 3),
        "docs_per_s": round(fresh_docs / elapsed, 1) if elapsed > 0 else None,
        "mb_per_s": round(fresh_bytes / elapsed / 1e6, 3) if elapsed > 0 else None,
        "shard_seconds": round(sum(s["seconds"] for s in summaries), 3),
        "workers": run.workers or None,
        "executor": run.executor,
    }
