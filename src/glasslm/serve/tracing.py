"""Tracing generated text back to the training data, for ``glasslm chat`` (``/trace``) and the server.

A thin layer over ``glasslm.trace``: it opens a ``trace_index`` once (suffix array memory-mapped, the
run's data order for steps), traces one text at a time under a lock, and adds what a client of
generated text needs beyond ``glasslm trace span``: each span's character offsets in the text, so a UI
can highlight it without re-tokenizing. The index's own tokenizer is used (the training data's), so a
model served with another tokenizer can still be traced, as OLMoTrace does.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from glasslm.artifacts import ArtifactError
from glasslm.trace import span as span_mod
from glasslm.trace.index import StaleIndexError, SuffixIndex, find_index, load_index

log = logging.getLogger("glasslm.serve")

# The tiny and small models rarely reproduce 8 tokens (span.DEFAULT_MIN_LEN, tuned for OLMoTrace's
# large models) verbatim; 6 tokens (~4-5 English words) still rules out chance matches of common
# phrases in small corpora while showing what a small model memorised.
DEFAULT_MIN_LEN = 6
DEFAULT_MAX_DOCS = 5
ENABLE_HINT = "build an index with: glasslm trace index RUN, then pass --trace RUN (or the index directory)"


class Tracer:
    """An open trace index; ``trace(text)`` gives the spans of ``text`` found verbatim in training data."""

    def __init__(self, index_dir: Path):
        self.index: SuffixIndex = load_index(index_dir)
        try:
            from glasslm.trace.steps import steps_lookup

            self.steps, self.steps_note = steps_lookup(self.index)
            self.tokenizer = span_mod.load_tokenizer(self.index)
        except Exception:
            self.index.close()
            raise
        # SuffixIndex reads one mmap and the steps lookup builds loader state: one query at a time.
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.index.path

    def close(self) -> None:
        self.index.close()

    def trace(
        self, text: str, min_len: int = DEFAULT_MIN_LEN, max_docs: int = DEFAULT_MAX_DOCS
    ) -> dict[str, Any]:
        """``glasslm trace span``'s answer for ``text`` with each span's ``start``/``end`` as character
        offsets in ``text`` (``token_start``/``token_end``: positions in the index tokenizer's tokens).

        A text the index cannot answer for (characters its tokenizer does not know) gives ``spans: []``
        and an ``error`` message rather than an exception: the text was generated either way.
        """
        result: dict[str, Any] = {"n_tokens": 0, "covered_tokens": 0, "covered_chars": 0, "spans": []}
        with self._lock:
            try:
                data = span_mod.trace_spans(
                    self.index,
                    text,
                    min_len=min_len,
                    max_docs=max_docs,
                    steps=self.steps,
                    tokenizer=self.tokenizer,
                )
            except span_mod.QueryError as e:
                return {**result, "error": str(e)}
            offsets = self.tokenizer.hf.encode(text, add_special_tokens=False).offsets
        if len(offsets) != data["n_tokens"]:  # both tokenize with the index's tokenizer; guard the pairing
            raise RuntimeError(
                f"tokenization of the traced text changed between calls ({len(offsets)} vs "
                f"{data['n_tokens']} tokens)"
            )
        covered = [False] * len(text)
        spans = []
        for s in data["spans"]:
            start, end = offsets[s["start"]][0], offsets[s["end"] - 1][1]
            covered[start:end] = [True] * (end - start)
            spans.append(
                {
                    "start": start,
                    "end": end,
                    "text": text[start:end],
                    "token_start": s["start"],
                    "token_end": s["end"],
                    "length": s["length"],
                    "count": s["count"],
                    "docs": [
                        {
                            "doc_id": d["doc_id"],
                            "source": d["source"],
                            "snippet": d["snippet"],
                            "offset": d["offset"],
                            "steps": d["steps"],
                        }
                        for d in s["docs"]
                    ],
                }
            )
        return {
            "n_tokens": data["n_tokens"],
            "covered_tokens": data["covered_tokens"],
            "covered_chars": sum(covered),
            "spans": spans,
        }

    def describe(self) -> dict[str, Any]:
        """What every traced response carries once: which index, whether steps are known and why not."""
        return {
            "index": str(self.path),
            "steps_available": self.steps is not None,
            "steps_note": self.steps_note,
        }


def open_tracer(explicit: Path | None, model: Path) -> Tracer | None:
    """The tracer for ``--trace PATH``, else one found beside ``model`` (a run directory), else None.

    An explicit index that cannot be opened is an error; one found automatically that is stale or broken
    is skipped with a warning, so a rebuilt corpus never stops a chat or a server from starting.
    """
    if explicit is not None:
        return Tracer(find_index(explicit))
    try:
        found = find_index(model)
    except ArtifactError:
        return None
    try:
        return Tracer(found)
    except (StaleIndexError, ArtifactError, OSError, KeyError) as e:
        log.warning("not tracing: the trace index %s beside the model cannot be used: %s", found, e)
        return None


def format_trace(
    result: dict[str, Any], min_len: int, steps_note: str | None = None, max_docs: int = 3
) -> str:
    """A compact terminal rendering: one line per span, then one line per document."""
    if result.get("error"):
        return f"trace: cannot trace this text: {result['error']}"
    spans = result["spans"]
    lines = [
        f"trace: {len(spans)} span(s) of >= {min_len} tokens; {result['covered_tokens']}/{result['n_tokens']} "
        "tokens of the reply occur verbatim in the training data"
    ]
    for s in spans:
        lines.append(
            f"  [{s['start']}:{s['end']}] {s['text']!r} ({s['length']} tokens, {s['count']:,} occurrence(s))"
        )
        for d in s["docs"][:max_docs]:
            steps = (
                "steps -"
                if d["steps"] is None
                else (f"steps {_compact(d['steps'])}" if d["steps"] else "not trained on")
            )
            snippet = " ".join(d["snippet"].split())
            lines.append(f"    {d['doc_id']} ({d['source']}; {steps}): {snippet[:160]}")
        if len(s["docs"]) > max_docs:
            lines.append(f"    … {len(s['docs']) - max_docs} more document(s)")
    if spans and steps_note:
        lines.append(f"  steps: {steps_note}")
    return "\n".join(lines)


def _compact(steps: list[int], limit: int = 8) -> str:
    shown = ",".join(map(str, steps[:limit]))
    return shown + (f",… ({len(steps)} in all)" if len(steps) > limit else "")
