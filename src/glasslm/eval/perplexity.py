"""Paloma-style perplexity: loss, perplexity and bits per byte per domain, on whole documents.

Each document is scored on its own (never across a document boundary): it is conditioned on one EOS
token, as if it followed the previous document's end, and every one of its tokens is predicted; its
own trailing EOS is not scored, since it is not part of the text. Documents longer than the window
are scored with a sliding window: targets advance ``stride`` tokens at a time and each chunk sees up
to ``window`` tokens of its own document before it (stride = window gives lm-eval's disjoint rolling
windows).

Bits per byte = total nats / (total UTF-8 bytes · ln 2). Dividing by bytes of text instead of by
tokens makes models with different tokenizers comparable: the numerator is −log p(text) whatever
the segmentation, the denominator a property of the text alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glasslm.artifacts import ArtifactError, read_manifest
from glasslm.data.documents import json_objects
from glasslm.model.olmo2 import OLMo2
from glasslm.tokenizer import Tokenizer


@dataclass
class Doc:
    """A document to score: its token ids (no trailing EOS) and the UTF-8 byte count of its text."""

    domain: str
    doc_id: str
    ids: Sequence[int]
    n_bytes: int


@dataclass
class DomainResult:
    domain: str
    docs: int = 0
    tokens: int = 0
    bytes: int = 0
    nats: float = 0.0
    per_doc: list[dict[str, float | int | str]] = field(default_factory=list)

    def to_json(self) -> dict[str, float | int | str]:
        loss = self.nats / self.tokens if self.tokens else float("nan")
        return {
            "domain": self.domain,
            "docs": self.docs,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loss": loss,
            "perplexity": math.exp(loss) if self.tokens else float("nan"),
            "bits_per_byte": self.nats / (self.bytes * math.log(2)) if self.bytes else float("nan"),
        }


def windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(context start, target start, target end) over a document's ``n_tokens`` predictions.

    Target t is predicted from the tokens before it; position 0 is the conditioning EOS, so the
    sequence is EOS + document and targets are sequence indices 1..n_tokens.
    """
    if stride <= 0 or stride > window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    start = 1
    while start <= n_tokens:
        end = min(start + stride, n_tokens + 1)
        # Each target sees up to `window` tokens before the chunk's end (inputs are seq[ctx:end-1]).
        ctx = max(0, end - 1 - window)
        yield ctx, start, end
        start = end


@torch.inference_mode()
def score_documents(
    model: OLMo2,
    docs: Iterable[Doc],
    eos_id: int,
    window: int | None = None,
    stride: int | None = None,
    batch_tokens: int = 8192,
    keep_per_doc: bool = True,
) -> dict[str, DomainResult]:
    """Sum of negative log-likelihoods per domain (see module docstring for the conventions)."""
    window = min(window or model.config.max_seq_len, model.config.max_seq_len)
    stride = stride or window
    device = next(model.parameters()).device
    results: dict[str, DomainResult] = {}
    pieces: list[tuple[int, list[int], int]] = []  # (doc index, input ids, number of scored targets)
    doc_list = list(docs)
    for d, doc in enumerate(doc_list):
        seq = [eos_id, *doc.ids]
        for ctx, start, end in windows(len(doc.ids), window, stride):
            # inputs seq[ctx:end-1]; the last (end - start) logits predict seq[start:end]
            pieces.append((d, list(seq[ctx:end]), end - start))
    nats = [0.0] * len(doc_list)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][1]))
    i = 0
    while i < len(order):
        longest = len(pieces[order[i]][1]) - 1
        n = max(1, batch_tokens // max(longest, 1))
        chunk = [pieces[k] for k in order[i : i + n]]
        i += n
        ids = torch.full((len(chunk), longest), eos_id, dtype=torch.long)
        labels = torch.full((len(chunk), longest), -100, dtype=torch.long)
        for b, (_, seq, n_targets) in enumerate(chunk):
            inp, tgt = seq[:-1], seq[1:]
            ids[b, : len(inp)] = torch.tensor(inp)
            labels[b, len(tgt) - n_targets : len(tgt)] = torch.tensor(tgt[len(tgt) - n_targets :])
        # Right padding under a plain causal mask: real tokens never see the padding after them.
        logits = model(ids.to(device)).float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.to(device).reshape(-1), reduction="none"
        ).reshape(labels.shape)
        for b, (d, _, _) in enumerate(chunk):
            nats[d] += float(loss[b].sum())
    for d, doc in enumerate(doc_list):
        res = results.setdefault(doc.domain, DomainResult(doc.domain))
        res.docs += 1
        res.tokens += len(doc.ids)
        res.bytes += doc.n_bytes
        res.nats += nats[d]
        if keep_per_doc:
            res.per_doc.append(
                {"doc_id": doc.doc_id, "tokens": len(doc.ids), "bytes": doc.n_bytes, "nats": nats[d]}
            )
    return results


def summarize(results: dict[str, DomainResult]) -> dict[str, object]:
    """Per-domain rows and their macro average (each domain weighs the same, as in Paloma)."""
    rows = [results[k].to_json() for k in sorted(results)]
    macro = {
        key: float(np.mean([r[key] for r in rows])) if rows else float("nan")
        for key in ("loss", "perplexity", "bits_per_byte")
    }
    total = {k: sum(int(r[k]) for r in rows) for k in ("docs", "tokens", "bytes")}
    return {"domains": rows, "macro": macro, "total": total}


# ---------------------------------------------------------------- document sources


def token_shard_docs(
    tokens_dir: Path, tokenizer: Tokenizer, max_docs: int | None = None, split: str = "heldout"
) -> Iterator[Doc]:
    """Documents of a ``tokens`` artifact's held-out split, per source (domain).

    Byte counts come from the index's ``bytes`` column when the tokenizer stage wrote one, else from
    decoding the document's tokens (exact for byte-level BPE, which round-trips).
    """
    import pyarrow.parquet as pq

    manifest = read_manifest(tokens_dir)
    if manifest.get("kind") != "tokens":
        raise ArtifactError(f"{tokens_dir}: is a '{manifest.get('kind')}' artifact, expected 'tokens'")
    metrics = manifest.get("metrics", {})
    if metrics.get("eos_id") is not None and int(metrics["eos_id"]) != tokenizer.eos_id:
        raise ArtifactError(
            f"{tokens_dir}: tokens were made with EOS id {metrics['eos_id']} but the model's tokenizer has "
            f"{tokenizer.eos_id}: evaluate with the model trained on these tokens (or re-tokenize)"
        )
    root = tokens_dir / split
    if not root.is_dir():
        raise ArtifactError(f"{tokens_dir}: no {split}/ directory (expected {split}/<source>/index.parquet)")
    for source_dir in sorted(p for p in root.iterdir() if (p / "index.parquet").is_file()):
        index = pq.read_table(source_dir / "index.parquet").to_pylist()
        parts: dict[int, np.ndarray] = {}
        for n, row in enumerate(index):
            if max_docs is not None and n >= max_docs:
                break
            part = int(row["part"])
            if part not in parts:
                parts[part] = np.load(source_dir / f"part-{part:05d}.npy", mmap_mode="r")
            ids = [int(t) for t in parts[part][int(row["start"]) : int(row["end"])]]
            if ids and ids[-1] == tokenizer.eos_id:
                ids = ids[:-1]
            n_bytes = row.get("bytes")
            if n_bytes is None:
                n_bytes = len(tokenizer.decode(ids).encode("utf-8"))
            yield Doc(str(row.get("source") or source_dir.name), str(row["doc_id"]), ids, int(n_bytes))


def jsonl_docs(paths: Sequence[Path], tokenizer: Tokenizer, max_docs: int | None = None) -> Iterator[Doc]:
    """Documents from JSONL files (plain or gzip), Dolma style; domain = ``source`` or the file name."""
    counts: dict[str, int] = {}
    for path in paths:
        for line_no, row in json_objects(path, ArtifactError):
            text = row.get("text")
            if not isinstance(text, str):
                raise ArtifactError(f"{path}:{line_no}: not a document with a string 'text' field")
            if not text:
                continue
            domain = str(row.get("source") or path.name.split(".")[0])
            if max_docs is not None and counts.get(domain, 0) >= max_docs:
                continue
            counts[domain] = counts.get(domain, 0) + 1
            ids = tokenizer.encode(text)
            yield Doc(domain, str(row.get("id", f"{path.name}:{line_no}")), ids, len(text.encode("utf-8")))
