"""``data mix``: a declarative recipe over documents + attributes → curated shards and a ledger.

Order of decisions for one input line (the ledger's ``first_rule`` is the first that decided):

1. ``quarantine``: unusable lines (documents.py) and ids already seen in an earlier shard;
2. ``unmatched_source``: the document's ``source`` matches no recipe source;
3. doc-level rules in order: the source's flags (dedupe_exact, dedupe_near, decon, language,
   toxicity), then the recipe-wide ``rules``, then the source's own ``rules``. Every rule is
   evaluated, so the ledger lists all that fired, not only the first;
4. span rules (remove_spans, mask; e.g. duplicate paragraphs, PII) → ``modified``; a document left
   empty is removed by ``empty_after_edits``;
5. held-out split: seeded, per source, among the documents that survived 1–4;
6. ``decon_heldout``: training documents sharing a 13-gram with any held-out document are removed;
7. ``sample``: source weights; w < 1 keeps a document with probability w, w ≥ 1 writes floor(w)
   copies plus one more with probability frac(w). Copies after the first get id ``<id>#<k>`` and are
   written after the shard's originals (never in the same training window as their original).

Randomness is a hash of (seed, purpose, document id), so decisions do not depend on shard order,
worker count or executor.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import operator
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from glasslm.config import ConfigError, closest
from glasslm.data import decon, ledger, storage
from glasslm.data.dedupe import DUPLICATES_FILE
from glasslm.data.documents import (
    QUARANTINE_FILE,
    Location,
    Quarantine,
    category,
    iter_documents,
    location,
    open_binary,
    parse_line,
    read_jsonl,
    shard_names,
    write_jsonl,
)
from glasslm.data.executors import (
    STATE_SUFFIX,
    ExecutorName,
    executor_name,
    load_array,
    map_shards,
    resumable,
)
from glasslm.data.progress import reasons, stored_bytes

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
ACTIONS = ("exclude", "include", "remove_spans", "mask")
AGGREGATES = ("max", "min", "sum", "mean", "first", "count")


@dataclass
class Rule:
    """One condition over an attribute. ``attribute`` is a full name or its tail after ``<exp>__``."""

    attribute: str = ""
    op: str = ">"  # < <= > >= == != exists missing
    value: float | str | None = None
    action: str = (
        "exclude"  # exclude: remove if it holds; include: remove unless it holds; remove_spans; mask
    )
    name: str = ""  # how the ledger calls it (default: attribute + op + value)
    replacement: str = ""  # mask only
    aggregate: str = "max"  # doc-level value of several spans

    def validate(self) -> None:
        if not self.attribute:
            raise ConfigError("rule: 'attribute' is required")
        if self.op not in (*OPS, "exists", "missing"):
            raise ConfigError(
                f"rule '{self.label}': op must be one of {[*OPS, 'exists', 'missing']}, got {self.op!r}"
            )
        if self.action not in ACTIONS:
            raise ConfigError(
                f"rule '{self.label}': action must be one of {list(ACTIONS)}, got {self.action!r}"
            )
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"rule '{self.label}': aggregate must be one of {list(AGGREGATES)}")
        if self.op in OPS and self.value is None:
            raise ConfigError(f"rule '{self.label}': op {self.op} needs a value")
        if self.op in ("<", "<=", ">", ">=") and not isinstance(self.value, int | float):
            # attribute values are numbers: "fifty" would never compare, so the rule would never fire
            raise ConfigError(f"rule '{self.label}': op {self.op} needs a number, got {self.value!r}")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return f"{self.attribute}{'' if self.op in OPS else ':'}{self.op}{'' if self.value is None else self.value}"

    def holds(self, value: Any) -> bool:
        if self.op == "exists":
            return value is not None
        if self.op == "missing":
            return value is None
        if value is None:
            return False
        try:
            return bool(OPS[self.op](value, self.value))
        except TypeError:  # e.g. a string attribute compared with a number: the rule does not hold
            return False


@dataclass
class HeldOut:
    fraction: float = 0.0
    count: int = 0  # when > 0, wins over fraction


@dataclass
class SourceRecipe:
    name: str = ""
    match: list[str] = field(
        default_factory=list
    )  # fnmatch patterns over the document's `source`; default [name]
    weight: float = 1.0
    heldout: HeldOut = field(default_factory=HeldOut)
    dedupe: bool = False  # remove exact and near duplicates, drop duplicate paragraphs
    decon: bool = False  # remove documents that overlap an evaluation set
    language: str | None = None
    language_min_score: float = 0.5
    toxicity_max: float | None = None
    pii_mask: bool = False
    rules: list[Rule] = field(default_factory=list)


@dataclass
class AttributeNames:
    """Attribute tails the source flags refer to (``{lang}`` is replaced by the source's language)."""

    exact_doc: str = "dedupe__exact_doc"
    near_doc: str = "dedupe__near_doc"
    paragraphs: str = "dedupe__paragraphs"
    decon: str = "decon__contaminated"
    language: str = "langid__{lang}"
    toxicity: str = "toxicity__doc"
    pii: dict[str, str] = field(
        default_factory=lambda: {
            "pii__EMAIL_ADDRESS": "|||EMAIL_ADDRESS|||",
            "pii__PHONE_NUMBER": "|||PHONE_NUMBER|||",
            "pii__IP_ADDRESS": "|||IP_ADDRESS|||",
        }
    )


@dataclass
class Recipe:
    documents: str = ""  # documents artifact (or run directory)
    attributes: list[str] = field(default_factory=list)  # attributes artifacts
    seed: int = 0
    rules: list[Rule] = field(default_factory=list)  # applied to every source
    sources: list[SourceRecipe] = field(default_factory=list)
    names: AttributeNames = field(default_factory=AttributeNames)
    decon_heldout: bool = True
    heldout_ngram: int = 13
    workers: int = 0
    executor: str = "process"

    def validate(self) -> None:
        seen = set()
        for s in self.sources:
            if not s.name:
                raise ConfigError("recipe source without a 'name'")
            if s.name in seen:
                raise ConfigError(f"recipe source '{s.name}' is listed twice")
            seen.add(s.name)
            if s.weight < 0:
                raise ConfigError(f"source '{s.name}': weight must be >= 0")
            if not 0 <= s.heldout.fraction < 1:
                raise ConfigError(f"source '{s.name}': heldout.fraction must be in [0, 1)")


def source_rules(recipe: Recipe, source: SourceRecipe) -> list[Rule]:
    """The source's flags expanded into rules, then recipe-wide rules, then the source's rules."""
    n = recipe.names
    rules: list[Rule] = []
    if source.dedupe:
        rules += [
            Rule(attribute=n.exact_doc, op="exists", name="dedupe_exact"),
            Rule(attribute=n.near_doc, op="exists", name="dedupe_near"),
            Rule(attribute=n.paragraphs, op="exists", action="remove_spans", name="dedupe_paragraphs"),
        ]
    if source.decon:
        rules.append(Rule(attribute=n.decon, op="exists", name="decon"))
    if source.language:
        rules.append(
            Rule(
                attribute=n.language.format(lang=source.language),
                op=">=",
                value=source.language_min_score,
                action="include",
                name="language",
            )
        )
    if source.toxicity_max is not None:
        rules.append(Rule(attribute=n.toxicity, op=">", value=source.toxicity_max, name="toxicity"))
    if source.pii_mask:
        rules += [  # one rule per PII type, named by it: three entries all called "pii_mask" said nothing
            Rule(
                attribute=a,
                op="exists",
                action="mask",
                replacement=r,
                name=f"pii_mask:{a.rsplit('__', 1)[-1].lower()}",
            )
            for a, r in n.pii.items()
        ]
    rules += recipe.rules + source.rules
    for rule in rules:
        rule.validate()
    return rules


def suspect_rules(recipe: Recipe, keys: set[str]) -> list[str]:
    """Warnings for the recipe's own rules whose attribute no document carried, when that looks like a
    mistake: a name close to one that is there (a typo), or a tagger none of the attribute artifacts
    ran. (An absent attribute is not an error in itself: sparse ones — ``c4__has_naughty_word``, a PII
    type — appear only where they matched; a rule on one that never appears simply never fires.)"""
    tails = {tail for key in keys for tail in _tails(key)}
    taggers = {key.split("__")[-2] for key in keys if key.count("__") >= 1}
    found: list[str] = []
    for where, rules in [("recipe", recipe.rules), *((f"source {s.name}", s.rules) for s in recipe.sources)]:
        for rule in rules:
            name = rule.attribute
            if rule.op == "missing" or name in tails:
                continue
            near = closest(name, sorted(tails), cutoff=0.85)
            tagger = name.split("__")[-2] if "__" in name else name
            if near:
                found.append(
                    f"{where}, rule {rule.label}: no document has attribute '{name}'; did you mean '{near}'?"
                )
            elif tagger not in taggers:
                found.append(
                    f"{where}, rule {rule.label}: no document has attribute '{name}', and no attribute of a "
                    f"'{tagger}' tagger is in the attribute artifacts (was it run?)"
                )
    return found


def _tails(key: str) -> list[str]:
    """``tags__gopher__word_count`` is also ``gopher__word_count`` and ``word_count`` to a rule."""
    parts = key.split("__")
    return ["__".join(parts[i:]) for i in range(len(parts))]


def uniform(seed: int, purpose: str, doc_id: str) -> float:
    """A reproducible number in [0, 1) for one (seed, purpose, document) triple."""
    digest = hashlib.blake2b(f"{seed}\x00{purpose}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


# --- attributes --------------------------------------------------------------------------------------


class Attributes:
    """The attributes of one shard from several artifacts, matched to documents by id in order."""

    def __init__(self, roots: list[Location], shard: str) -> None:
        self.queues: list[dict[str, deque[dict[str, Any]]]] = []
        for root in roots:
            path = location(root) / shard  # attributes_path, local or on an object store
            if not path.is_file():
                raise ConfigError(
                    f"{root}: attributes artifact has no file for shard '{shard}' (expected {path})"
                )
            by_id: dict[str, deque[dict[str, Any]]] = {}
            for record in read_jsonl(path):
                by_id.setdefault(record["id"], deque()).append(record.get("attributes") or {})
            self.queues.append(by_id)
        self._resolved: dict[tuple[str, ...], dict[str, list[str]]] = {}

    def take(self, doc_id: str) -> dict[str, list[list[Any]]]:
        merged: dict[str, list[list[Any]]] = {}
        for by_id in self.queues:
            queue = by_id.get(doc_id)
            if queue:
                merged.update(queue.popleft())
        return merged

    def keys_seen(self) -> set[str]:
        """Every attribute name some document matched to a recipe source carried."""
        return {key for keys in self._resolved for key in keys}

    def spans(self, attrs: dict[str, list[list[Any]]], name: str) -> list[list[Any]]:
        """Spans of attribute ``name`` (a full name or a ``__``-separated tail) over all experiments."""
        keys = tuple(attrs)
        table = self._resolved.setdefault(keys, {})
        full = table.get(name)
        if full is None:
            full = table[name] = [k for k in keys if k == name or k.endswith("__" + name)]
        out: list[list[Any]] = []
        for k in full:
            out.extend(attrs[k] or [])
        return out


def doc_value(spans: list[list[Any]], aggregate: str) -> Any:
    if not spans:
        return None
    scores = [s[2] for s in spans if len(s) >= 3]
    if aggregate == "count":
        return len(spans)
    if not scores:
        return None
    if aggregate == "first" or not all(isinstance(v, int | float) for v in scores):
        return scores[0]
    if aggregate == "max":
        return max(scores)
    if aggregate == "min":
        return min(scores)
    return sum(scores) if aggregate == "sum" else sum(scores) / len(scores)


def apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Replace spans (overlaps merged; an overlapping removal wins over a mask)."""
    merged: list[list[Any]] = []
    for start, end, repl in sorted(edits, key=lambda e: (e[0], -e[1])):
        start, end = max(0, start), min(len(text), end)
        if end <= start:
            continue
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            if repl == "":
                merged[-1][2] = ""
        else:
            merged.append([start, end, repl])
    out, pos = [], 0
    for start, end, repl in merged:
        out.append(text[pos:start])
        out.append(repl)
        pos = end
    out.append(text[pos:])
    return "".join(out)


# --- pass 1: filter each shard ----------------------------------------------------------------------


@dataclass
class ShardJob:
    index: int
    name: str
    path: Location
    recipe: Recipe
    attribute_roots: list[Location]
    scratch: Path
    duplicate_ids: set[int] = field(default_factory=set)  # fused mode, second try: see filter_write_shard


def _match_source(recipe: Recipe, source: str | None) -> SourceRecipe | None:
    for s in recipe.sources:
        if any(fnmatch.fnmatchcase(source or "", pattern) for pattern in (s.match or [s.name])):
            return s
    return None


def _duplicates(roots: list[Location], shard: str) -> dict[str, str]:
    """id -> surviving id for whole-document duplicates of this shard (exact wins over near)."""
    found: dict[str, str] = {}
    for root in roots:
        path = location(root) / DUPLICATES_FILE
        if not path.is_file():
            continue
        with open_binary(path) as f:
            table = pq.read_table(
                f, filters=[("shard", "==", shard), ("kind", "in", ["exact_doc", "near_doc"])]
            )
        for doc_id, kind, of in zip(
            *(table.column(c).to_pylist() for c in ("id", "kind", "duplicate_of")), strict=True
        ):
            if kind == "exact_doc" or doc_id not in found:
                found[doc_id] = of
    return found


def filter_shard(job: ShardJob) -> dict[str, Any]:
    return _from_state(
        resumable(_filter_state(job.scratch, job.index), lambda: _to_state(_filter_shard(job)))
    )


def _to_state(part: dict[str, Any]) -> dict[str, Any]:
    """A pass-1 result as scratch data (executors.save_state stores JSON values, not objects)."""
    return {**part, "rows": [row.columns() for row in part["rows"]]}


def _from_state(part: dict[str, Any]) -> dict[str, Any]:
    return {**part, "rows": [ledger.LedgerRow(**row) for row in part["rows"]]}


def _filter_state(scratch: Path, index: int) -> Path:
    return scratch / f"filter-{index:05d}{STATE_SUFFIX}"


def _filter_shard(job: ShardJob) -> dict[str, Any]:
    recipe = job.recipe
    quarantine = Quarantine()
    attrs = Attributes(job.attribute_roots, job.name)
    dups = _duplicates(job.attribute_roots, job.name)
    rules_of = {s.name: source_rules(recipe, s) for s in recipe.sources}
    rows: list[ledger.LedgerRow] = []
    survivors: list[dict[str, Any]] = []  # documents after step 4, with their (possibly modified) text
    for line, doc in iter_documents(job.path, quarantine, seen_ids=set()):
        text: str = doc["text"]
        attributes = attrs.take(doc["id"])
        source = _match_source(recipe, doc.get("source"))
        row = ledger.LedgerRow.of(
            job.name, line, doc["id"], doc.get("source"), len(text.encode("utf-8", "surrogatepass"))
        )
        row.duplicate_of = dups.get(doc["id"])
        rows.append(row)
        if source is None:
            row.remove("unmatched_source", doc.get("source"))
            continue
        row.recipe_source = source.name
        edits: list[tuple[int, int, str]] = []
        span_rules: list[tuple[Rule, list[list[Any]]]] = []
        for rule in rules_of[source.name]:
            spans = attrs.spans(attributes, rule.attribute)
            if rule.action in ("remove_spans", "mask"):
                span_rules.append((rule, spans))
                continue
            value = doc_value(spans, rule.aggregate)
            holds = rule.holds(value)
            if holds if rule.action == "exclude" else not holds:
                row.remove(rule.label, value)
        if row.decision == "removed":
            continue
        for rule, spans in span_rules:
            chosen = [
                s
                for s in spans
                if rule.op in ("exists", "missing") or rule.holds(s[2] if len(s) > 2 else None)
            ]
            if chosen:
                replacement = rule.replacement if rule.action == "mask" else ""
                edits.extend((int(s[0]), int(s[1]), replacement) for s in chosen)
                row.fire(rule.label, len(chosen))
        if edits:
            text = apply_edits(text, edits)
            if not text.strip():
                row.remove("empty_after_edits", 0)
                continue
            row.decision = "modified"
        else:
            row.decision = "kept"
        survivors.append({"row": len(rows) - 1, "doc": {**doc, "text": text}})
    for record in quarantine.records:
        raw = record["raw"].encode() if record["encoding"] == "utf-8" else b""
        row = ledger.LedgerRow.of(job.name, record["line"], _id_of(raw), None, _raw_bytes(record))
        row.decision = "quarantined"
        row.fire("quarantine", record["reason"])
        rows.append(row)
    keys = sorted(attrs.keys_seen())
    return {"rows": rows, "survivors": survivors, "quarantine": quarantine.records, "attribute_keys": keys}


def _id_of(raw: bytes) -> str | None:
    """The id of a quarantined line when it has a usable one (parse_line: hostile lines never raise)."""
    obj, reason = parse_line(raw)
    return (
        obj.get("id") if reason is None and isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
    )


def _raw_bytes(record: dict[str, Any]) -> int:
    import base64

    return (
        len(record["raw"].encode()) if record["encoding"] == "utf-8" else len(base64.b64decode(record["raw"]))
    )


def _usable_ids(rows: list[ledger.LedgerRow]) -> list[tuple[int, str]]:
    """(row position, id) of the rows pass 1 did not quarantine: what the cross-shard id check needs."""
    return [(r, row.id) for r, row in enumerate(rows) if row.decision != "quarantined" and row.id is not None]


def filter_write_shard(job: ShardJob) -> dict[str, Any]:
    """Passes 1 and 3 in one process, for recipes without a held-out split (nothing global to wait
    for but the cross-shard id check). The survivors' text never leaves memory: the two-pass path
    saves it to the work directory (as data, executors.save_state) and reads it back, ~10% of the
    mix's CPU time.

    The output assumes no id repeats one of an earlier shard (the driver checks once every shard is
    done); a shard that has such ids is run again with them (``job.duplicate_ids``).
    """
    tag = "-redo" if job.duplicate_ids else ""
    return resumable(
        job.scratch / f"filter-write-{job.index:05d}{tag}{STATE_SUFFIX}", lambda: _filter_write_shard(job)
    )


def _filter_write_shard(job: ShardJob) -> dict[str, Any]:
    part = _filter_shard(job)
    ids = _usable_ids(part["rows"])
    write = WriteJob(job.index, job.name, job.recipe, job.scratch, set(), job.duplicate_ids, None)
    return {"ids": ids, "attribute_keys": part["attribute_keys"], **_write_part(write, part)}


# --- pass 2 and 3: held-out n-grams, then split / decon / sample / write --------------------------


@dataclass
class WriteJob:
    index: int
    name: str
    recipe: Recipe
    scratch: Path
    heldout: set[int]  # survivor positions (in this shard) that go to the held-out split
    duplicate_ids: set[int]  # row positions quarantined as ids seen in an earlier shard
    heldout_index: Path | None


def heldout_ngrams(job: WriteJob) -> np.ndarray:
    part = filter_shard_cached(job.scratch, job.index)
    texts = [s["doc"]["text"] for i, s in enumerate(part["survivors"]) if i in job.heldout]
    return decon.ngram_set(texts, job.recipe.heldout_ngram)[0]


def filter_shard_cached(scratch: Path, index: int) -> dict[str, Any]:
    return _from_state(resumable(_filter_state(scratch, index), _missing_pass1))


def _missing_pass1() -> dict[str, Any]:
    raise RuntimeError("mix: the filter pass result of a shard is missing from the work directory")


def out_name(shard: str) -> str:
    for suffix in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".json.gz"):
        if shard.endswith(suffix):
            return shard[: -len(suffix)] + ".jsonl.gz"
    return shard + ".jsonl.gz"


def write_shard(job: WriteJob) -> dict[str, Any]:
    return resumable(job.scratch / f"write-{job.index:05d}{STATE_SUFFIX}", lambda: _write_shard(job))


def _write_shard(job: WriteJob) -> dict[str, Any]:
    return _write_part(job, filter_shard_cached(job.scratch, job.index))


def _write_part(job: WriteJob, part: dict[str, Any]) -> dict[str, Any]:
    recipe = job.recipe
    rows: list[ledger.LedgerRow] = part["rows"]
    weights = {s.name: s.weight for s in recipe.sources}
    for i in job.duplicate_ids:
        row = rows[i]
        row.decision, row.rules, row.first_rule = "quarantined", [], None
        row.fire("quarantine", f"duplicate id: {row.id} (first seen in an earlier shard)")
    train_candidates = [
        s
        for i, s in enumerate(part["survivors"])
        if i not in job.heldout and s["row"] not in job.duplicate_ids
    ]
    overlap = None
    if job.heldout_index is not None and train_candidates:
        index = np.load(job.heldout_index, allow_pickle=False)
        overlap = decon.overlaps(
            [s["doc"]["text"] for s in train_candidates], index, recipe.heldout_ngram, want_spans=False
        )
    position = {id(s): k for k, s in enumerate(train_candidates)}
    train_name = f"documents/{out_name(job.name)}"
    train_docs: list[dict[str, Any]] = []
    extra_copies: dict[int, list[dict[str, Any]]] = {}  # copy number -> copies, written after the originals
    heldout_docs: dict[str, list[dict[str, Any]]] = {}
    for i, s in enumerate(part["survivors"]):
        if s["row"] in job.duplicate_ids:
            continue
        row, doc = rows[s["row"]], s["doc"]
        source = row.recipe_source
        assert source is not None  # survivors matched a recipe source in pass 1
        if i in job.heldout:
            target = heldout_docs.setdefault(source, [])
            row.split, row.output_file = "held_out", f"heldout/{source}/{out_name(job.name)}"
            row.output_line, row.copies = len(target) + 1, 1
            row.output_bytes = len(doc["text"].encode("utf-8", "surrogatepass"))
            target.append(doc)
            continue
        k = position[id(s)]
        if overlap is not None and overlap.matched[k]:
            row.remove("decon_heldout", round(overlap.fraction(k), 6))
            continue
        weight = weights[source]
        whole = math.floor(weight)
        # uniform() is in [0, 1): a whole weight needs no draw (same result, one hash less per document)
        copies = whole + int(weight > whole and uniform(recipe.seed, "sample", doc["id"]) < weight - whole)
        if copies == 0:
            row.remove("sample", weight)
            continue
        row.split, row.output_file, row.output_line = "train", train_name, len(train_docs) + 1
        row.copies, row.output_bytes = copies, len(doc["text"].encode("utf-8", "surrogatepass"))
        train_docs.append(doc)
        for c in range(1, copies):
            extra_copies.setdefault(c, []).append(
                {
                    **doc,
                    "id": f"{doc['id']}#{c}",
                    "metadata": {**(doc.get("metadata") or {}), "copy_of": doc["id"]},
                }
            )
    # Up-sampled copies go after the shard's originals, each round in document order (all #1, then all
    # #2): next to its original, a short document and its copy shared one training window, so the
    # model saw the same text twice in one context (Dolma's mixer lists the files again: far apart too).
    for c in sorted(extra_copies):
        train_docs.extend(extra_copies[c])
    out = job.scratch / "out"
    # ISA-L gzip level 1: zlib level 6 was half of the mix's time; ISA-L level 1 is ~5x faster than
    # zlib level 1 on our text and ~2% smaller (benchmarks/dedupe_mix_throughput.py).
    if train_docs:
        write_jsonl(out / train_name, train_docs, isal_level=1)
    else:  # a shard run again without survivors (filter_write_shard) must not keep its first output
        (out / train_name).unlink(missing_ok=True)
    for source, docs in heldout_docs.items():
        write_jsonl(out / f"heldout/{source}/{out_name(job.name)}", docs, isal_level=1)
    for row in rows:
        if row.split is None:
            row.split = "none"
    ledger.write_part(job.scratch / f"ledger-{job.index:05d}.parquet", rows)
    late = [
        {
            "file": job.name,
            "line": rows[i].line,
            "reason": rows[i].rules[0]["value"].strip('"'),
            "raw": "",
            "encoding": "utf-8",
        }
        for i in sorted(job.duplicate_ids)
    ]
    return {"quarantine": part["quarantine"] + late}


# --- the driver ---------------------------------------------------------------------------------------


def emptied_sources(recipe: Recipe, funnel: dict[str, dict[str, Any]]) -> list[str]:
    """Warnings for recipe sources whose held-out count asked for more documents than survived the rules:
    all of them went to the held-out split, so the source is evaluated on but never trained on. (A count
    equal to what survives is how a held-out-only source is written, and is not warned about.)"""
    found = []
    for s in recipe.sources:
        f = funnel.get(s.name)
        if f and s.heldout.count > f["held_out_docs"] and not f["train_docs"] and s.weight > 0:
            found.append(
                f"source {s.name}: all {f['held_out_docs']} documents that survived the rules went to the "
                f"held-out split (heldout.count {s.heldout.count}), so none is trained on; lower the count"
            )
    return found


def choose_heldout(recipe: Recipe, candidates: list[tuple[int, int, str, str]]) -> dict[int, set[int]]:
    """Seeded per-source selection among survivors: (shard, survivor position, id, source) -> chosen."""
    by_source: dict[str, list[tuple[float, int, int]]] = {}
    for shard, pos, doc_id, source in candidates:
        by_source.setdefault(source, []).append((uniform(recipe.seed, "heldout", doc_id), shard, pos))
    chosen: dict[int, set[int]] = {}
    for s in recipe.sources:
        pool = sorted(by_source.get(s.name, []))
        k = s.heldout.count if s.heldout.count > 0 else math.floor(s.heldout.fraction * len(pool) + 0.5)
        for _, shard, pos in pool[: min(k, len(pool))]:
            chosen.setdefault(shard, set()).add(pos)
    return chosen


def _cross_shard_duplicates(ids_per_shard: list[list[tuple[int, str]]]) -> dict[int, set[int]]:
    """Ids repeated across shards: the first shard (in order) keeps the id, later rows are quarantined.

    ``ids_per_shard``: (row position, id) of each shard's usable rows, in row order."""
    seen: set[str] = set()
    duplicate_ids: dict[int, set[int]] = {}
    for i, ids in enumerate(ids_per_shard):
        for r, doc_id in ids:
            if doc_id in seen:
                duplicate_ids.setdefault(i, set()).add(r)
            else:
                seen.add(doc_id)
    return duplicate_ids


def _two_pass(
    recipe: Recipe, jobs: list[ShardJob], workers: int | None, executor: ExecutorName
) -> tuple[list[dict[str, Any]], set[str]]:
    """Filter every shard, choose the held-out split among all survivors, then decon and write.
    Returns the write results and the attribute names the documents carried."""
    scratch = jobs[0].scratch
    parts = map_shards(
        filter_shard,
        jobs,
        workers=workers,
        executor=executor,
        desc="mix: filter",
        sizes=[stored_bytes(j.path) for j in jobs],
    )
    duplicate_ids = _cross_shard_duplicates([_usable_ids(part["rows"]) for part in parts])
    candidates: list[tuple[int, int, str, str]] = []
    for i, part in enumerate(parts):
        for pos, s in enumerate(part["survivors"]):
            if s["row"] not in duplicate_ids.get(i, set()):
                candidates.append((i, pos, s["doc"]["id"], part["rows"][s["row"]].recipe_source))
    heldout = choose_heldout(recipe, candidates)
    keys = {key for part in parts for key in part.get("attribute_keys", [])}
    del parts, candidates  # the workers re-read their pass-1 results from the work directory

    write_jobs = [
        WriteJob(
            j.index,
            j.name,
            recipe,
            scratch,
            heldout.get(j.index, set()),
            duplicate_ids.get(j.index, set()),
            None,
        )
        for j in jobs
    ]
    if recipe.decon_heldout and any(heldout.values()):
        index_file = scratch / "heldout-ngrams.npy"
        if load_array(index_file) is None:  # not there yet (or not plain data: made again)
            sets = map_shards(
                heldout_ngrams,
                [j for j in write_jobs if j.heldout],
                workers=workers,
                executor=executor,
                desc="mix: held-out n-grams",
            )
            np.save(index_file, np.unique(np.concatenate(sets)) if sets else np.zeros(0, np.uint64))
        for j in write_jobs:
            j.heldout_index = index_file
    written = map_shards(
        write_shard,
        write_jobs,
        workers=workers,
        executor=executor,
        desc="mix: write",
        quarantined=lambda r: reasons(r["quarantine"]),
    )
    return written, keys


def run(
    recipe: Recipe, documents: Location, attribute_roots: Sequence[Location], root: Path, scratch: Path
) -> dict[str, Any]:
    """Execute ``recipe`` into the artifact directory ``root``; returns the manifest metrics."""
    started = time.perf_counter()
    if not recipe.sources:
        raise ConfigError("recipe has no sources: add at least one under 'sources:'")
    for s in recipe.sources:
        source_rules(recipe, s)  # validate every rule before any work
    shards = shard_names(documents)
    if not shards:
        raise ConfigError(f"{documents}: no document shards (*.jsonl.gz) found")
    workers, executor = recipe.workers or None, executor_name(recipe.executor)
    jobs = [
        ShardJob(i, name, path, recipe, list(attribute_roots), scratch)
        for i, (name, path) in enumerate(shards)
    ]
    if any(s.heldout.fraction > 0 or s.heldout.count > 0 for s in recipe.sources):
        results, keys = _two_pass(recipe, jobs, workers, executor)
    else:  # no held-out split: one pass per shard (see filter_write_shard)
        results = map_shards(
            filter_write_shard,
            jobs,
            workers=workers,
            executor=executor,
            desc="mix: filter+write",
            sizes=[stored_bytes(j.path) for j in jobs],
            quarantined=lambda r: reasons(r["quarantine"]),
        )
        redo = [
            replace(jobs[i], duplicate_ids=d)
            for i, d in _cross_shard_duplicates([r["ids"] for r in results]).items()
        ]
        if redo:
            again = map_shards(
                filter_write_shard,
                redo,
                workers=workers,
                executor=executor,
                desc="mix: shards with repeated ids",
            )
            for job, result in zip(redo, again, strict=True):
                results[job.index] = result
        keys = {key for r in results for key in r.get("attribute_keys", [])}

    # Assemble the artifact: outputs, ledger (shard order, then line), quarantine file.
    # the tasks' outputs: moved, or (an object-store --out) their uploaded objects taken by reference
    storage.place_tree(scratch / "out", root)
    (root / "documents").mkdir(exist_ok=True)
    parts = [scratch / f"ledger-{j.index:05d}.parquet" for j in jobs]
    for part in parts:
        storage.fetch(part)  # small, read here; on the store when its task ran on another machine
    table = ledger.concat_parts(parts)
    ledger.write(root / ledger.LEDGER_FILE, table)
    quarantine = [q for r in results for q in r["quarantine"]]
    write_jsonl(root / QUARANTINE_FILE, quarantine)
    metrics = ledger.summary(table)
    metrics["quarantined_by_reason"] = dict(
        sorted(Counter(category(q["reason"]) for q in quarantine).items())
    )
    metrics["suspect_rules"] = suspect_rules(recipe, keys) + emptied_sources(recipe, metrics["funnel"])
    metrics["seconds_total"] = round(time.perf_counter() - started, 3)
    total = metrics["input"]["bytes"]
    metrics["mb_per_s"] = (
        round(total / 1e6 / metrics["seconds_total"], 3) if metrics["seconds_total"] else None
    )
    return metrics
