"""Counting token sequences and finding the maximal spans of a text that occur verbatim in training data.

Maximal spans follow OLMoTrace (Liu et al., 2025, "OLMoTrace: Tracing Language Model Outputs Back to
Trillions of Training Tokens"): for every start position ``i`` of the output take the longest
``output[i:i+L_i]`` that occurs in the training stream; since ``i + L_i`` never decreases with ``i``,
a span is maximal (not inside another) exactly when its end is past the previous position's end.
Spans shorter than ``min_len`` tokens are dropped. Spans never cross an EOS token of the output:
documents in the stream are separated by EOS, and a match across it would join two documents.

Every span lists its occurrence count and the documents holding it (id, source, the text around the
match decoded from the stream) and, when the index knows the training run, the steps that saw them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from glasslm.tokenizer import Tokenizer
from glasslm.trace.index import TOKENIZER, Match, SuffixIndex

DEFAULT_MIN_LEN = 8  # OLMoTrace shows spans of at least a few words; 8 tokens ≈ 6 words of English
SNIPPET_TOKENS = 24  # context decoded on each side of a match
MAX_DOCS = 10  # documents listed per span (the count covers all occurrences)
POSITION_CAP = 10_000

# (stream offset, length) of each match -> the steps that trained on any of its tokens
StepsLookup = Callable[[list[tuple[int, int]]], dict[tuple[int, int], list[int]]]


class QueryError(ValueError):
    """A query that cannot be answered correctly (unknown characters, longer than the index...)."""


@dataclass
class DocHit:
    doc_id: str
    source: str
    offset: int  # where the match starts in the stream
    before: str
    match: str
    after: str
    steps: list[int] | None = None

    @property
    def snippet(self) -> str:
        return f"{self.before}[[{self.match}]]{self.after}"


@dataclass
class Span:
    start: int  # token positions in the output, end exclusive
    end: int
    text: str
    count: int
    docs: list[DocHit] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.end - self.start

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["length"] = self.length
        for doc, hit in zip(data["docs"], self.docs, strict=True):
            doc["snippet"] = hit.snippet
        return data


def load_tokenizer(index: SuffixIndex) -> Tokenizer:
    return Tokenizer.from_file(index.path / TOKENIZER)


def tokenize(tokenizer: Tokenizer, text: str) -> list[int]:
    """Encode like the training data; refuse text whose characters the tokenizer cannot represent."""
    ids = tokenizer.encode(text)
    unk = _unk_id(tokenizer)
    if unk is not None and unk in ids:
        enc = tokenizer.hf.encode(text, add_special_tokens=False)
        chars = sorted({text[s:e] for i, (s, e) in zip(enc.ids, enc.offsets, strict=True) if i == unk})
        raise QueryError(
            f"the text has characters the index's tokenizer maps to its unknown token: {chars!r}; "
            "the training data cannot contain them as written, so counts would be wrong — remove them"
        )
    return ids


def _unk_id(tokenizer: Tokenizer) -> int | None:
    unk = getattr(tokenizer.hf.model, "unk_token", None)
    return tokenizer.hf.token_to_id(unk) if unk else None


def count(index: SuffixIndex, ids: list[int]) -> int:
    if not ids:
        raise QueryError("empty query: the text tokenizes to no tokens")
    if len(ids) > index.n_tokens:
        raise QueryError(f"query has {len(ids)} tokens but the whole index has only {index.n_tokens}")
    return index.count(ids)


def maximal_spans(index: SuffixIndex, ids: list[int], min_len: int) -> list[tuple[int, int]]:
    """(start, end) of the maximal spans of ``ids`` found in the stream, at least ``min_len`` long."""
    if min_len < 1:
        raise QueryError(f"--min-len must be at least 1, got {min_len}")
    spans = []
    for seg_start, seg_end in _segments(ids, index.eos_id):
        prev_end = seg_start
        for i in range(seg_start, seg_end):
            if seg_end - i < min_len:
                break  # nothing long enough can start here or later
            end = i + index.longest_prefix(ids[i:seg_end])
            if end > prev_end:
                if end - i >= min_len:
                    spans.append((i, end))
                prev_end = end
    return spans


def _segments(ids: list[int], eos: int | None) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for i, t in enumerate(ids):
        if t == eos:
            bounds.append((start, i))
            start = i + 1
    bounds.append((start, len(ids)))
    return [(s, e) for s, e in bounds if e > s]


def doc_hits(
    index: SuffixIndex,
    tokenizer: Tokenizer,
    match: Match,
    length: int,
    max_docs: int = MAX_DOCS,
    context: int = SNIPPET_TOKENS,
) -> list[DocHit]:
    """The first ``max_docs`` distinct documents (in stream order) holding the match, with snippets."""
    hits: list[DocHit] = []
    seen: set[int] = set()
    # Positions come from the suffix array in suffix order; sorting them lists documents in stream
    # order. A span seen a million times is listed from its first POSITION_CAP suffix rows only.
    for pos in index.positions(match, limit=max(POSITION_CAP, max_docs)).tolist():
        row = index.doc_of(pos)
        if row in seen:
            continue
        seen.add(row)
        doc_start = int(index.doc_offset[row])
        doc_end = doc_start + int(index.doc_len[row])
        if (
            index.eos_id is not None
            and doc_end > doc_start
            and index.tokens(doc_end - 1, doc_end)[0] == index.eos_id
        ):
            doc_end -= 1  # the trailing EOS is not text
        info = index.doc_info(row)
        hits.append(
            DocHit(
                doc_id=info["doc_id"],
                source=info["source"],
                offset=pos,
                before=tokenizer.decode(index.tokens(max(doc_start, pos - context), pos).tolist()),
                match=tokenizer.decode(index.tokens(pos, pos + length).tolist()),
                after=tokenizer.decode(
                    index.tokens(pos + length, min(doc_end, pos + length + context)).tolist()
                ),
            )
        )
        if len(hits) >= max_docs:
            break
    return hits


def trace_spans(
    index: SuffixIndex,
    text: str,
    min_len: int = DEFAULT_MIN_LEN,
    max_docs: int = MAX_DOCS,
    steps: StepsLookup | None = None,
    tokenizer: Tokenizer | None = None,
) -> dict[str, Any]:
    """Everything ``glasslm trace span`` shows: the spans of ``text`` found verbatim, their documents.

    ``tokenizer``: the index's, already loaded (a server traces many texts; loading it is ~6 ms for a
    4k vocabulary and grows with the vocabulary)."""
    tokenizer = load_tokenizer(index) if tokenizer is None else tokenizer
    ids = tokenize(tokenizer, text)
    spans = []
    for start, end in maximal_spans(index, ids, min_len):
        match = index.find(ids[start:end])
        span = Span(
            start=start,
            end=end,
            text=tokenizer.decode(ids[start:end]),
            count=match.count,
            docs=doc_hits(index, tokenizer, match, end - start, max_docs),
        )
        spans.append(span)
    if steps is not None:
        matches = sorted({(d.offset, s.end - s.start) for s in spans for d in s.docs})
        seen = steps(matches) if matches else {}
        for s in spans:
            for d in s.docs:
                d.steps = seen.get((d.offset, s.end - s.start), [])
    covered = np.zeros(len(ids), dtype=bool)
    for s in spans:
        covered[s.start : s.end] = True
    return {
        "index": str(index.path),
        "n_tokens": len(ids),
        "min_len": min_len,
        "covered_tokens": int(covered.sum()),
        "spans": [s.to_json() for s in spans],
        "steps_available": steps is not None,
    }


def count_text(index: SuffixIndex, text: str) -> dict[str, Any]:
    tokenizer = load_tokenizer(index)
    ids = tokenize(tokenizer, text)
    return {
        "index": str(index.path),
        "text": text,
        "tokens": ids,
        "n_tokens": len(ids),
        "count": count(index, ids),
    }
