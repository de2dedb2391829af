"""Sample generations of the final model, with the spans found verbatim in the training data marked."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import torch

from glasslm import artifacts
from glasslm.report.base import Run, Section

MAX_NEW_TOKENS = 40  # enough to see what the model does; the report must stay fast on a CPU
PLAIN_PROMPTS = ("def ", "The Python ", "import ")
CHAT_QUESTION = "How do I read a file in Python?"


def _prompts(tokenizer: Any) -> list[tuple[str, str]]:
    """(label, prompt text) for every sample: a few plain continuations and one chat turn."""
    chat = tokenizer.format_chat([{"role": "user", "content": CHAT_QUESTION}], add_generation_prompt=True)
    return [(p, p) for p in PLAIN_PROMPTS] + [(f"chat: {CHAT_QUESTION}", chat)]


def models(run: Run) -> list[tuple[str, Path]]:
    """(label, model directory): the pretrained model and the final (most adapted) one, when they differ."""
    from glasslm.model.checkpoint import resolve_model_dir

    found: list[tuple[str, Path]] = []
    for label, path in (("pretrained", run.path / "train"), ("final", run.path)):
        try:
            directory = resolve_model_dir(path)  # the run directory resolves to its most adapted model
        except artifacts.ArtifactError:
            continue
        if all(directory.resolve() != d.resolve() for _, d in found):
            found.append((label, directory))
    return found


def generate(run: Run, model_dir: Path) -> list[tuple[str, str]]:
    """[(prompt label, greedy completion)] of the model in ``model_dir``."""
    from glasslm.model.checkpoint import load_model
    from glasslm.model.generate import Engine, SamplingParams
    from glasslm.tokenizer import Tokenizer

    loaded = load_model(model_dir)
    tokenizer_file = loaded.tokenizer_path or run.path / "tokenizer"
    tokenizer = Tokenizer.from_file(tokenizer_file)
    prompts = _prompts(tokenizer)
    engine = Engine(loaded.model, tokenizer, max_batch=len(prompts))
    with torch.inference_mode():
        completions = engine.generate([p for _, p in prompts], SamplingParams(max_new_tokens=MAX_NEW_TOKENS))
    return [(label, c.text) for (label, _), c in zip(prompts, completions, strict=True)]


def highlight(text: str, spans: list[dict[str, Any]], tokenizer: Any) -> str:
    """``text`` html-escaped, with the characters of every traced span inside <mark>.

    Spans are token positions of the index tokenizer's encoding of ``text``; that encoding's offsets
    map them back to characters exactly (decoding a token prefix can split a UTF-8 character)."""
    offsets = tokenizer.hf.encode(text, add_special_tokens=False).offsets
    marked = [False] * len(text)
    for s in spans:
        if s["end"] <= len(offsets):
            start, end = offsets[s["start"]][0], offsets[s["end"] - 1][1]
            marked[start:end] = [True] * (end - start)
    out, i = [], 0
    while i < len(text):
        j = i
        while j < len(text) and marked[j] == marked[i]:
            j += 1
        chunk = html.escape(text[i:j])
        out.append(f"<mark>{chunk}</mark>" if marked[i] else chunk)
        i = j
    return "".join(out)


def samples_section(runs: list[Run]) -> Section:
    from glasslm.trace import index as trace_index
    from glasslm.trace import span as trace_span

    section = Section("Sample generations")
    run = runs[0]
    found = models(run)
    if not found:
        section.missing = "no model in this run (train/ or adapt/) to sample from"
        return section
    index = None
    try:
        index = trace_index.load_index(trace_index.find_index(run.path))
        intro = (
            f" <mark>Marked</mark> text occurs verbatim in the training data (maximal spans of at least "
            f"{trace_span.DEFAULT_MIN_LEN} tokens, found with the trace index as in OLMoTrace)."
        )
    except artifacts.ArtifactError as err:
        intro = " Not traced: " + html.escape(str(err))
    parts = [
        f"Greedy completions ({MAX_NEW_TOKENS} new tokens at most) of the pretrained and the final model, "
        "continuing plain text and answering a chat turn." + intro
    ]
    rows: list[dict[str, Any]] = []
    try:
        tokenizer = trace_span.load_tokenizer(index) if index is not None else None
        for model_label, model_dir in found:
            parts.append(f"<b>{model_label} model</b> (<code>{html.escape(str(model_dir))}</code>)")
            for n, (label, text) in enumerate(generate(run, model_dir), 1):
                shown = html.escape(text)
                if index is not None and tokenizer is not None and text.strip():
                    try:
                        traced = trace_span.trace_spans(
                            index, text, min_len=trace_span.DEFAULT_MIN_LEN, max_docs=3
                        )
                    except trace_span.QueryError as err:
                        shown += f" <i>(not traced: {html.escape(str(err))})</i>"
                    else:
                        shown = highlight(text, traced["spans"], tokenizer)
                        rows += [
                            {
                                "sample": f"{model_label} {n}",
                                "span": s["text"],
                                "tokens": s["length"],
                                "occurrences": s["count"],
                                "documents (id · source)": "; ".join(
                                    f"{d['doc_id']} · {d['source']}" for d in s["docs"]
                                ),
                            }
                            for s in traced["spans"]
                        ]
                if not text:
                    shown = "<i>(ended at once: the model's first token was end-of-text)</i>"
                parts.append(
                    f"{model_label} {n}. prompt <code>{html.escape(label)}</code>"
                    f"<code class='sample'>{shown}</code>"
                )
    finally:
        if index is not None:
            index.close()
    section.text = "<br><br>".join(parts)
    section.tables.append(("Training-data matches of the marked spans (first 3 documents each)", rows))
    return section
